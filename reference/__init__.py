"""convbench reference: problems (shapes, FLOPs, bytes), argument checks, the float64 oracle and the tolerance table.

Nothing here depends on ``kernels`` or ``bench``; they depend on this.
"""

from . import oracle
from .agreement import TrainAgreement, reference_training, train_agreement
from .args import avg_pool2d_problem, conv2d_problem, max_pool2d_problem, pair
from .cnn import ARCHITECTURES, BasicCNN, SimpleCNN, build_model
from .data import synthetic_mnist
from .net_agreement import NetTrainAgreement, net_train_agreement
from .net_problem import NetTrainProblem
from .optim import OPTIMIZERS, make_optimizer
from .problems import DTYPES, FLOATING, LAYOUTS, ConvProblem, PoolProblem, dtype_name, layout_of, pooled_size
from .routed import routed
from .tolerance import TOLERANCES, UPDATE_ULPS, Check, Tolerance, check, check_exact, combine, tolerance
from .train_problem import TrainProblem

__all__ = [
    "oracle", "conv2d_problem", "max_pool2d_problem", "avg_pool2d_problem", "pair",
    "DTYPES", "FLOATING", "LAYOUTS", "ConvProblem", "PoolProblem", "dtype_name", "layout_of", "pooled_size",
    "TOLERANCES", "Tolerance", "Check", "check", "check_exact", "combine", "tolerance", "UPDATE_ULPS",
    "ARCHITECTURES", "OPTIMIZERS", "SimpleCNN", "BasicCNN", "TrainProblem", "TrainAgreement", "build_model",
    "make_optimizer", "reference_training", "synthetic_mnist", "train_agreement",
    "NetTrainProblem", "NetTrainAgreement", "net_train_agreement", "routed",
]
