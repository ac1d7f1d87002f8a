"""medref: reproducible semi-supervised medical referring image segmentation.

Stages (one CLI sub-command each, see ``medref --help``):
download -> preprocess -> pseudolabel -> split -> train -> eval -> report.
"""

__version__ = "0.1.0"
