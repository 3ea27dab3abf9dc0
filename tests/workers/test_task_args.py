"""Each shipped task declares its arguments as a frozen dataclass (``Args``): the same names and defaults as its
constructor, checked with ``workers.checks``, so that a bad argument is a ``CheckError`` naming it."""

import dataclasses
import inspect

import pytest

from workers import TASKS, make_problem
from workers.checks import CheckError
from workers.problem import Problem
from workers.tasks import REQUIRED, DeconvolutionArgs, DerainArgs, SparseCodingArgs, task_arguments
from workers.tasks.deconvolution import DeconvolutionArgs as DeconvolutionArgsThere

SMALL = {
    "sparse_coding": {"m": 16, "n": 32, "batch_size": 16, "val_size": 64, "test_size": 16},
    "deconvolution": {"size": 32, "patch": 16, "kernel_size": 9, "batch_size": 2, "width": 4, "depth": 2},
    "derain": {"size": 32, "patch": 16, "batch_size": 2, "width": 4, "depth": 2},
}


def _constructor_defaults(cls) -> dict:
    params = inspect.signature(cls.__init__).parameters
    return {name: p.default for name, p in params.items() if name != "self"}


@pytest.mark.parametrize("task", TASKS)
def test_args_dataclass_matches_the_constructor(task):
    cls = TASKS[task]
    args = cls.Args
    assert dataclasses.is_dataclass(args) and args.__dataclass_params__.frozen
    defaults = {f.name: f.default for f in dataclasses.fields(args)}
    assert defaults == _constructor_defaults(cls)  # names, defaults
    assert list(defaults) == list(_constructor_defaults(cls))  # and order (positional calls stay the same)
    assert task_arguments(task) == defaults == task_arguments(cls)
    args()  # the defaults pass the checks


def test_the_args_classes_are_exported():
    assert (SparseCodingArgs, DeconvolutionArgs, DerainArgs) == tuple(TASKS[t].Args for t in
                                                                     ("sparse_coding", "deconvolution", "derain"))
    assert DeconvolutionArgs is DeconvolutionArgsThere


@pytest.mark.parametrize("task", TASKS)
def test_a_problem_keeps_its_checked_arguments(task):
    problem = make_problem(task, SMALL[task])
    assert problem.args == TASKS[task].Args(**SMALL[task])
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.args.seed = 1


BAD = [
    ("sparse_coding", {"m": -3}, "m: expected an int >= 1, got -3", ("m",)),
    ("sparse_coding", {"n": True}, "n: expected an int >= 1, got True", ("n",)),
    ("sparse_coding", {"preset": "huge"}, "preset: expected one of small, paper, got 'huge'", ("preset",)),
    ("sparse_coding", {"layers": 0}, "layers: expected an int >= 1, got 0", ("layers",)),
    ("sparse_coding", {"sparsity": 0}, "sparsity: expected a number in (0, 1], got 0", ("sparsity",)),
    ("sparse_coding", {"noise": -0.1}, "noise: expected a finite number >= 0, got -0.1", ("noise",)),
    ("sparse_coding", {"lam": float("nan")}, "lam: expected a finite number >= 0, got nan", ("lam",)),
    ("sparse_coding", {"step": 0}, "step: expected a finite number > 0, got 0", ("step",)),
    ("sparse_coding", {"dtype": "float16"}, "dtype: expected one of float32, float64, got 'float16'", ("dtype",)),
    ("sparse_coding", {"seed": -1}, "seed: expected an int in [0, 9007199254740992], got -1", ("seed",)),
    ("deconvolution", {"kernel": "box"}, "kernel: expected one of gaussian, motion, got 'box'", ("kernel",)),
    ("deconvolution", {"scheme": "admm"}, "scheme: expected one of fb, hqs, drs, got 'admm'", ("scheme",)),
    ("deconvolution", {"boundary": "reflect"}, "boundary: expected one of circular, zero, got 'reflect'", ("boundary",)),
    ("deconvolution", {"scheme": "hqs", "boundary": "zero"},
     "boundary: expected 'circular' for scheme='hqs' (its prox is solved by FFT), got 'zero'", ("boundary", "scheme")),
    ("deconvolution", {"scheme": "drs"},
     "operator: expected 'pnp_convex' for scheme='drs' (its reflection is nonexpansive only for D = I - β∇R with R convex), "
     "got 'pnp_lipschitz'", ("operator", "scheme")),
    ("deconvolution", {"adaptive": "yes"}, "adaptive: expected true or false, got 'yes'", ("adaptive",)),
    ("deconvolution", {"adaptive": True},
     "operator: expected 'pnp_convex' for adaptive=true (it weights the convex regularizer's thresholds), "
     "got 'pnp_lipschitz'", ("operator", "adaptive")),
    ("deconvolution", {"map_lr": 0.3},
     "map_lr: expected no value without adaptive=true (it is the threshold map's learning rate), got 0.3",
     ("map_lr", "adaptive")),
    ("deconvolution", {"operator": "pnp_convex", "adaptive": True, "map_lr": 0},
     "map_lr: expected a finite number > 0 (a multiple of the outer learning rate), got 0", ("map_lr",)),
    ("deconvolution", {"noise": 1.0}, "noise: expected a number in [0, 1), got 1.0", ("noise",)),
    ("deconvolution", {"step": 2.0}, "step: expected τ·L in (0, 2) for scheme='fb', got 2.0", ("step", "scheme")),
    ("deconvolution", {"scheme": "hqs", "step": -1}, "step: expected τ·L > 0, got -1", ("step",)),
    ("deconvolution", {"size": 8, "patch": 8, "kernel_size": 3}, "size: expected an int >= 16, got 8", ("size",)),
    ("deconvolution", {"kernel_size": 17}, "kernel_size: expected at most patch = 16, got 17", ("kernel_size", "patch")),
    ("deconvolution", {"patch": 48}, "patch: expected at most size = 32, got 48", ("patch", "size")),
    ("deconvolution", {"kernel_size": 8}, "kernel_size: expected an odd int, got 8", ("kernel_size",)),
    ("deconvolution", {"kernel": "motion", "kernel_size": 1},
     "kernel_size: expected an odd int >= 3 for kernel='motion', got 1", ("kernel_size", "kernel")),
    ("deconvolution", {"blur_sigma": 0.0}, "blur_sigma: expected a finite number > 0, got 0.0", ("blur_sigma",)),
    ("deconvolution", {"operator": "pnp_convex", "width": 5},
     "width: expected an even int >= 2 for operator='pnp_convex' (its filters come in pairs), got 5", ("width", "operator")),
    ("deconvolution", {"depth": 1}, "depth: expected an int >= 2, got 1", ("depth",)),
    ("derain", {"operator": "relu"}, "operator: expected one of lipschitz, convex, free, got 'relu'", ("operator",)),
    ("derain", {"model": "joint"}, "model: expected one of prox, pair, got 'joint'", ("model",)),
    ("derain", {"init": "zeros"}, "init: expected one of filter, rainy, got 'zeros'", ("init",)),
    ("derain", {"anchor": float("inf")}, "anchor: expected a finite number >= 0, got inf", ("anchor",)),
    ("derain", {"operator": "convex", "width": 5},
     "width: expected an even int >= 2 for operator='convex' (its filters come in pairs), got 5", ("width", "operator")),
    ("derain", {"patch": 33}, "patch: expected at most size = 32, got 33", ("patch", "size")),
    ("derain", {"density": 0.7},
     "density: expected a number in (0, 2/3] (an image's rain density reaches 1.5 times it), got 0.7", ("density",)),
    ("derain", {"seed": 2**23 + 1}, "seed: expected an int in [0, 8388608], got 8388609", ("seed",)),
]


@pytest.mark.parametrize("task, change, message, fields", BAD, ids=[f"{b[0]}-{b[2].split(':')[0]}" for b in BAD])
def test_a_bad_argument_is_a_check_error_naming_it(task, change, message, fields):
    """The same error from the dataclass, from make_problem and from the constructor called directly."""
    args = {**SMALL[task], **change}
    for build in (lambda: TASKS[task].Args(**args), lambda: make_problem(task, args), lambda: TASKS[task](**args)):
        with pytest.raises(CheckError) as info:
            build()
        assert (str(info.value), info.value.field, info.value.fields) == (message, fields[0], fields)


def test_a_user_problem_without_args_falls_back_to_its_signature():
    class Plain(Problem):
        def __init__(self, size: int, depth=2, *extra, scale=1.0, **more):
            super().__init__()

    assert task_arguments(Plain) == {"size": REQUIRED, "depth": 2, "scale": 1.0}


def test_a_user_problem_s_args_are_its_dataclass_s_init_fields():
    @dataclasses.dataclass(frozen=True)
    class KwArgs:
        size: int
        tags: tuple = dataclasses.field(default_factory=tuple)
        derived: int = dataclasses.field(default=0, init=False)

    class Keyworded(Problem):
        Args = KwArgs

        def __init__(self, **task_args):
            super().__init__()
            self.args = KwArgs(**task_args)

    assert task_arguments(Keyworded) == {"size": REQUIRED, "tags": ()}

    class NotADataclass(Problem):
        Args = dict

    with pytest.raises(ValueError, match="^task NotADataclass: Args must be a dataclass"):
        task_arguments(NotADataclass)


def test_the_problem_docstring_s_args_example():
    """The ``Args`` example of workers/problem.py: its fields are the task's arguments, and a bad one is named."""
    import textwrap

    import workers.problem

    blocks = workers.problem.__doc__.split("::\n")
    first = textwrap.dedent(blocks[1].split("\nCheck it with")[0])
    second = textwrap.dedent(blocks[2].split("\nWithout ``Args``")[0])
    namespace = {}
    exec(compile(first + "\n" + second, "args_example.py", "exec"), namespace)
    denoise = namespace["Denoise"]
    assert task_arguments(denoise) == {"n": 32, "batch_size": 16, "noise": 0.1, "seed": 0} == _constructor_defaults(denoise)
    assert denoise(n=4).args == namespace["DenoiseArgs"](n=4)
    with pytest.raises(CheckError) as info:
        denoise(noise=-1)
    assert (info.value.field, str(info.value)) == ("noise", "noise: expected a finite number >= 0, got -1")


def test_a_subclass_of_a_shipped_task_with_its_own_constructor_is_read_from_its_signature():
    from workers.tasks import task_arguments
    from workers.tasks.sparse_coding import SparseCoding

    class Slower(SparseCoding):
        def __init__(self, delay: float = 0.0, m: int = 16):
            super().__init__(m=m)
            self.delay = delay

    assert task_arguments(Slower) == {"delay": 0.0, "m": 16}  # not SparseCoding's Args
    assert "delay" not in task_arguments(SparseCoding)
