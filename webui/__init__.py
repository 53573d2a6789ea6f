"""The web app's own helpers (app.py is the layout and the wiring): text and HTML, and Gradio's file cache."""
