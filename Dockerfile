# Docker Space / self-hosting image: `docker build -t ichdemo . && docker run -p 7860:7860 ichdemo`
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    HF_HOME=/home/user/.cache/huggingface \
    MALLOC_ARENA_MAX=2
# MALLOC_ARENA_MAX: fewer glibc malloc arenas for the threaded server; in one 8-session run of
# tests/app/test_load.py the server levelled off at about 1.4 GB with it against 1.6-1.8 GB without.

RUN apt-get update && apt-get install -y --no-install-recommends curl libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# Hugging Face Spaces run containers as user 1000.
RUN useradd -m -u 1000 user
WORKDIR /home/user/app

COPY --chown=user requirements.txt .
RUN pip install -r requirements.txt

# Code and the bundled default checkpoints are baked in; ICHDEMO_MODELS may point the app at Hub repos instead.
COPY --chown=user . .
USER user

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:7860/ > /dev/null || exit 1
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
