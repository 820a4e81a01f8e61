"""`vidiff app`: a web page (Gradio) over the same commands the CLI runs.

`handlers` turns a page's form into the command's own argument list, runs it through the command's parser and
`run` (so the page and the command line check every value the same way and write the same files), and reads back
what it wrote; it imports no gradio. `page` builds the Gradio page and launches it; only `vidiff app` imports it.

The page never phones home: Gradio's analytics and version check are off (set here, before gradio is imported),
there are no share links, and it binds to localhost unless told otherwise.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # (the Blocks get analytics_enabled=False as well)
