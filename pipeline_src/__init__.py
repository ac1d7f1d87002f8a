"""medref: reproducible semi-supervised medical referring image segmentation.

Stages (one CLI sub-command each, see ``medref --help``):
download -> preprocess -> pseudolabel -> split -> train -> eval -> report.
"""

import os

# Bit-identical CPU weights from run to run (and a resumed run equal to an uninterrupted one) need oneMKL's
# Conditional Numerical Reproducibility. Without it (MKL_VERBOSE shows "CNR:OFF"), oneMKL may choose its GEMM
# code by the arrays' memory alignment, which differs between processes, so two runs of the same training can
# differ in the last bits. That is our best explanation of an intermittent CI failure (a resumed run ending
# 6e-5 away from an uninterrupted one, in 2 of ~6 full-suite runs, never reproduced on the AMD dev machine).
# "AUTO,STRICT" keeps the code path oneMKL picks for this CPU and makes it alignment-independent; on the
# 2-core AMD EPYC dev machine it gives the same bytes as CNR off. It must be set before oneMKL's first call,
# hence here, before anything imports torch. A user's own MKL_CBWR wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
