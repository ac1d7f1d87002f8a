"""medref: reproducible semi-supervised medical referring image segmentation.

Stages (one CLI sub-command each, see ``medref --help``):
download -> preprocess -> pseudolabel -> split -> train -> eval -> report.
"""

from pipeline_src import numerics

# The CPU numerics mode (base.cpu_numerics) must be in the environment before anything imports torch: oneDNN,
# ATen and oneMKL read it once, at their first kernel call. Every medref process imports this package first
# (the console script, a submitit SLURM job unpickling its callable), so it is set here; pipeline_src/numerics.py
# says how the mode is found and what each mode sets.
#
# Both modes turn on oneMKL's Conditional Numerical Reproducibility (MKL_CBWR=...,STRICT): bit-identical CPU
# weights from run to run, and a resumed run equal to an uninterrupted one, need it. Without it (MKL_VERBOSE
# shows "CNR:OFF"), oneMKL may choose its GEMM code by the arrays' memory alignment, which differs between
# processes, so two runs of the same training can differ in the last bits. That is our best explanation of an
# intermittent CI failure (a resumed run ending 6e-5 away from an uninterrupted one, in 2 of ~6 full-suite runs,
# never reproduced on the AMD dev machine). native keeps the code path oneMKL picks for this CPU ("AUTO,STRICT");
# portable caps it at AVX2 ("AVX2,STRICT"). A user's own MKL_CBWR wins.
numerics.configure_from_environment()

__version__ = "0.1.0"
