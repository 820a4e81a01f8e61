"""The one progress bar: tqdm that draws its finished state once.

tqdm's `close()` redraws the bar after its last update. On a terminal the redraw lands on the same line, but in
a log (stderr sent to a file, CI, a notebook's captured output) the line reads "100% ... 100% ...": the bar
twice. `ProgressBar` skips that redraw when the last drawn state already is the final one, and still ends the
line, so whatever is printed next starts a line of its own.

Its own module (not vidiff.utils) because importing tqdm.auto costs about 0.1 s, which `vidiff --help` should
not pay.
"""
from __future__ import annotations

from tqdm.auto import tqdm


class ProgressBar(tqdm):
    """`tqdm.auto.tqdm` (same arguments), whose close does not draw an already drawn final state again."""

    def close(self):
        self._closing = True
        super().close()

    def display(self, msg=None, pos=None, *args, **kwargs):
        # close() redraws with msg=None; skip it when the last update drew this very count already
        if getattr(self, "_closing", False) and msg is None and self.n == self.last_print_n:
            return True
        return super().display(msg, pos, *args, **kwargs)
