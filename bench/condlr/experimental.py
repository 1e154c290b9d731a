"""Experimental, unverified on the hardware they are meant for: ``ManifoldSGD(experimental=...)``.

* ``"cuda_graph"`` (:class:`GraphedStep`): capture the whole step, momentum SGD included, in one
  CUDA graph after a few eager steps and replay it: one launch instead of the thousands of
  Python-dispatched kernels of a VGG16 step. **It has never run on a GPU**: only the captured step
  run eagerly on the CPU is tested (tests/test_condlr.py); ``benchmarks/gpu_check/run.sh`` times it
  and checks it against the eager step.
* ``"cpu_workers"`` (:class:`WorkerPool`): on a CPU with torch at T ≥ 2 threads, run the buckets'
  projections, retractions and conditionings (independent of each other) on T worker threads of
  one intra-op thread each, so that large ops overlap. Measured on a 2-core VM only (docs/speed.md):
  faster for VGG16's step, slower for small steps (the workers contend for the GIL).

Both are off by default. Numerically they take the default step (up to the rounding of LAPACK at
another thread count); the tests compare them with it.
"""

from __future__ import annotations

import warnings

import torch

#: the names ``ManifoldSGD(experimental=...)`` accepts
EXPERIMENTAL = ("cuda_graph", "cpu_workers")
#: eager steps before the capture (the momentum buffers and cached constants exist by then)
GRAPH_WARMUP = 3


def check_cuda_graph(*, mode: str, conditioner: str, step_scale: str, retraction: str, devices: set[str]) -> None:
    """A clear error where a captured step cannot work, rather than a failed capture later."""
    if retraction == "householder":
        raise ValueError("experimental 'cuda_graph' needs retraction='cholesky_qr2' (or 'auto'): batched "
                         "Householder QR is not graph-capturable on CUDA")
    if mode == "approx_orth" and (conditioner == "eigh" or step_scale == "reference"):
        raise ValueError("experimental 'cuda_graph' needs a step without host synchronisation: approx_orth with "
                         "conditioner='newton_schulz' and step_scale='inv_a' (eigh and eigvalsh synchronise on "
                         "CUDA), or mode 'mean' / 'unit'")
    if devices != {"cuda"}:
        raise ValueError(f"experimental 'cuda_graph' needs every parameter on a CUDA device, got {sorted(devices)}")


class GraphedStep:
    """The step of ``opt`` (a ManifoldSGD) captured in a CUDA graph and replayed.

    What a replay reads must sit at fixed addresses: the gradients are copied into static buffers
    (the trainer's zero_grad(set_to_none=True) makes new ones every step), each group's lr is a
    0-dim device tensor (the schedule changes it), and momentum SGD is torch.optim.SGD's foreach
    update written with that tensor lr (:meth:`static_sgd`). The rest is the eager step itself. A
    step whose signature differs from the captured one (other parameters with gradients, new
    momentum buffers after load_state_dict, other hyper-parameters but lr) runs eagerly and the
    graph is captured anew; a capture that fails warns and leaves the step eager for good.
    """

    def __init__(self, opt):
        self.opt = opt
        self.graph = None  # torch.cuda.CUDAGraph of static_step once captured
        self.key = None  # the signature it was captured with
        self.static_grads: list[torch.Tensor] = []
        self.static_lr: list[torch.Tensor] = []
        self.steps_taken = 0
        self.failed = False  # a capture failed: eager from then on

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def reset(self) -> None:
        """Forget the graph (new momentum buffers): the next step captures again."""
        self.graph = self.key = None

    def params(self) -> list[torch.Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"] if p.grad is not None]

    def signature(self):
        """What a captured graph bakes in: the parameters stepped, their momentum buffers and the
        groups' hyper-parameters other than lr."""
        hp = tuple((g["momentum"], g["dampening"], g["weight_decay"], g["nesterov"], g["maximize"])
                   for g in self.opt.param_groups)
        params = self.params()
        bufs = [self.opt.state.get(p, {}).get("momentum_buffer") for p in params]
        # compared by identity: the key holds the tensors themselves, so no id can be reused while it lives
        return tuple(params), tuple(bufs), hp

    @staticmethod
    def same_signature(a, b) -> bool:
        return (a is not None and b is not None and a[2] == b[2] and len(a[0]) == len(b[0])
                and all(x is y for x, y in zip(a[0] + a[1], b[0] + b[1])))

    def load_inputs(self) -> None:
        """Gradients into the static buffers (which become the parameters' .grad), lr into its tensors."""
        params = self.params()
        torch._foreach_copy_(self.static_grads, [p.grad for p in params])
        for p, g in zip(params, self.static_grads):
            p.grad = g
        for t, group in zip(self.static_lr, self.opt.param_groups):
            t.fill_(group["lr"])

    def prepare(self) -> bool:
        """Allocate the static gradients and lr tensors for the parameters that have a gradient now;
        False where the step cannot be made static yet (a momentum buffer still missing)."""
        groups, state = self.opt.param_groups, self.opt.state
        params = self.params()
        if not params or any(g["maximize"] for g in groups):
            return False
        if any(g["momentum"] and state.get(p, {}).get("momentum_buffer") is None
               for g in groups for p in g["params"] if p.grad is not None):
            return False
        self.static_grads = [torch.empty_like(p.grad) for p in params]
        self.static_lr = [torch.zeros((), dtype=torch.float32, device=params[0].device) for _ in groups]
        self.load_inputs()
        return True

    def static_sgd(self) -> None:
        """torch.optim.SGD's foreach step (weight decay, momentum, dampening, Nesterov) with the lr
        read from the 0-dim tensors of :meth:`prepare`: nothing depends on a host value that changes."""
        for group, lr in zip(self.opt.param_groups, self.static_lr):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["momentum"]:
                bufs = [self.opt.state[p]["momentum_buffer"] for p in params]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
                grads = torch._foreach_add(grads, bufs, alpha=group["momentum"]) if group["nesterov"] else bufs
            torch._foreach_sub_(params, torch._foreach_mul(grads, lr.to(params[0].dtype)))

    def static_step(self) -> None:
        """The step as the graph runs it (run eagerly, it takes the same step as the default one;
        tests compare the two on the CPU)."""
        self.opt._step(sgd=self.static_sgd)

    def step(self) -> None:
        self._step()
        self.steps_taken += 1

    def _step(self) -> None:
        if self.failed:
            self.opt._step()
            return
        key = self.signature()
        if self.graph is not None and self.same_signature(key, self.key):
            self.load_inputs()
            self.graph.replay()
            return
        self.reset()
        if self.steps_taken < GRAPH_WARMUP or not self.prepare():
            self.opt._step()
            return
        self._capture(key)

    def _capture(self, key) -> None:
        """Take this step on a side stream (the warm-up the capture needs), then capture the same
        step into a graph without running it."""
        device = self.static_grads[0].device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            self.static_step()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                self.static_step()
        except Exception as exc:  # noqa: BLE001 - any capture failure: keep training eagerly
            torch.cuda.synchronize(device)
            self.failed = True
            warnings.warn(f"ManifoldSGD: capturing the step in a CUDA graph failed ({type(exc).__name__}: {exc}); "
                          "the step runs eagerly from now on", RuntimeWarning, stacklevel=4)
            return
        self.graph, self.key = graph, key


class WorkerPool:
    """Independent tasks (callables on disjoint tensors) on T worker threads of one intra-op thread
    each, T = torch's thread count, when the step's estimated work is at least :attr:`min_work`."""

    #: below this estimated n·r² work the step is mostly small ops, which get slower on workers
    min_work = 5e8

    def __init__(self):
        self.pool = None  # (size, ThreadPoolExecutor), made on first use

    def pays(self, n_tasks: int, work: float) -> bool:
        return torch.get_num_threads() >= 2 and n_tasks >= 2 and work >= self.min_work

    def run(self, tasks: list) -> None:
        n = torch.get_num_threads()
        if self.pool is None or self.pool[0] != n:  # first use, or the thread count changed
            from concurrent.futures import ThreadPoolExecutor

            if self.pool is not None:
                self.pool[1].shutdown(wait=False)
            self.pool = (n, ThreadPoolExecutor(max_workers=n, thread_name_prefix="condlr",
                                               initializer=torch.set_num_threads, initargs=(1,)))
        pool = self.pool[1]

        def run(task):
            with torch.no_grad():  # grad mode is per thread
                task()

        torch.set_num_threads(1)  # the workers' BLAS: one thread each (the MKL setting is process-wide)
        try:
            for f in [pool.submit(run, t) for t in tasks]:
                f.result()
        finally:
            torch.set_num_threads(n)
