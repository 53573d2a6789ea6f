"""train.results: the comparison page from bundled checkpoints, keeping the sections other tools write into it."""

from pathlib import Path

from train import results

REPO = Path(__file__).resolve().parents[2]


def test_results_page_keeps_other_tools_sections(tmp_path, capsys):
    page = tmp_path / "RESULTS.md"
    drafts = "<!-- drafts:begin -->\n## Drafts\n| a | b |\n<!-- drafts:end -->\n"
    finetune = "<!-- finetune:begin -->\n## Corrections\n<!-- finetune:end -->\n"
    page.write_text("an old table\n\n" + drafts + "\n" + finetune)
    argv = [str(REPO / "checkpoints" / "lse_unet_lite0_blood"), "--md", str(page)]
    assert results.main(argv) == 0
    text = page.read_text()
    assert "an old table" not in text and "| lse_unet_lite0_blood |" in text
    assert text.index(drafts) < text.index(finetune)
    assert results.main(argv) == 0 and page.read_text() == text  # regenerating changes nothing
