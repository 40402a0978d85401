"""A local transformers model as a chat backend (the `transformers` teacher and judge).

Calls from many worker threads are micro-batched into one engine run (up to `batch_size`
prompts), because a model is fast in batches and slow one prompt at a time.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

from tutorloop.hardware import ResolvedRuntime
from tutorloop.llm.client import Sampling


class TransformersChat:
    """A local transformers model answering chat calls from many threads, in micro-batches."""

    kind = "transformers"

    def __init__(self, model: str, runtime: ResolvedRuntime, batch_size: int = 8, wait_s: float = 0.05,
                 calculator: bool = False) -> None:
        from tutorloop import modeling

        self.model = model
        # the stage's resolved device and precision (they are in the reply cache's key: make_chat)
        self._lm, self._tok = modeling.load(model, dtype=runtime.dtype, device=runtime.device)
        self._batch, self._wait, self._calculator = batch_size, wait_s, calculator
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._worker, daemon=True, name="teacher-batcher").start()

    def __call__(self, messages: list[dict], sampling: Sampling) -> str:
        fut: Future = Future()
        self._queue.put((messages, sampling, fut))
        return fut.result()

    def _worker(self) -> None:
        from tutorloop.inference import engine

        while True:
            items = [self._queue.get()]
            deadline = time.monotonic() + self._wait
            while len(items) < self._batch:
                try:
                    items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[Sampling, list] = {}
            for it in items:  # one generate() per distinct sampling setting
                groups.setdefault(it[1], []).append(it)
            for s, group in groups.items():
                try:
                    prompts = [self._tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                               for m, _, _ in group]
                    gen = engine.generate(self._lm, self._tok, prompts, do_sample=s.temperature > 0,
                                          temperature=s.temperature or 1.0, top_p=s.top_p,
                                          max_new_tokens=s.max_tokens, batch_size=len(prompts), seed=s.seed,
                                          calculator=self._calculator, desc="teacher")
                    for (_, _, fut), text in zip(group, gen.texts):
                        fut.set_result(text[0] if isinstance(text, list) else text)
                except Exception as e:  # noqa: BLE001 - handed to the waiting caller
                    for _, _, fut in group:
                        if not fut.done():
                            fut.set_exception(e)
