#!/usr/bin/env bash
# The commands that trained the published demo (issue 18: every stage a `vidiff train` run), from the repository
# root on the 2-core CPU, one thread per process, as they ran: the base chain in one process and, once the
# text-to-image model existed, the interpolation and SSR stages in two more. Logs: base.log, interpolation.log,
# ssr.log beside this file (progress bars thinned to one line per 10%).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
python tools/train_demo.py --steps text,data,t2i,base > base.log 2>&1 &   # t2i 1197 s, then base 3165 s
while [ ! -f runs/demo/t2i/train/sd/model_index.json ]; do sleep 20; done
python tools/train_demo.py --steps interpolation > interpolation.log 2>&1 &   # 3989 s
python tools/train_demo.py --steps ssr > ssr.log 2>&1 &                       # 3787 s
wait
python tools/train_demo.py --steps publish,gallery                             # -> vidiff/assets/demo, docs/demo.gif
make quality                                                                   # -> docs/quality
