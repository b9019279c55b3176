"""Seed-compatible entry point: `cd app && python app.py` serves the web page on http://127.0.0.1:5000.

It searches with the API at $IMAGEFINDER_API_URL (default http://127.0.0.1:8000); start that
first (`cd api && uvicorn app:app`), or run both with `make run` / `python -m imagefinder.serve`.
All the code lives in the package (`imagefinder.web`).
"""

import sys

from imagefinder.web import create_app, main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

app = create_app()  # for `flask --app app run` and WSGI servers
