"""Free-running inference: scanpath, findings, boxes, report and answers for a batch of images.

Images are grouped by token grid so that a group needs no padding in its prefix; within a
group the KV cache is shared and the decoder runs one token per step. A sequence that has
finished its report keeps receiving tokens that are masked out (attention mask 0, position
not advanced), so every image sees exactly the sequence layout it was trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional

from model.abcdef import STEPS
from model.anatomy_prior import AnatomyPrior, TokenPlan, load_prior
from model.architecture import GazeXModel, pad_image_tokens
from model.decoding import DecoderWeights, KVDecoder
from model.geometry import PatchGrid
from model.imaging import ImageInput, patchify, prepare_image
from model.prompt import prefix_ids
from model.tokenizer import ANSWER, EOS, GAZE, GAZE_END, PAD, QUESTION, REPORT

logger = logging.getLogger(__name__)


@dataclass
class RawOutput:
    """Model outputs for one image, in token-grid units (no source coordinates yet)."""

    grid: PatchGrid
    patch_indices: list[int]
    regions: list[int]
    steps: list[int]
    dwell_ms: list[float]
    gap_ms: list[float]
    gaze_probs: npt.NDArray[np.float32]  # (K, N)
    probabilities: npt.NDArray[np.float32]  # (F,)
    boxes: npt.NDArray[np.float32]  # (F, 4) cx, cy, w, h fractions
    mask_probs: npt.NDArray[np.float32]  # (F, N)
    report: str
    answers: list[str]
    #: The pooled image representation the domain gate scores (:func:`pooled_image_tokens`).
    image_features: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros(0, dtype=np.float32)
    )
    #: Each fixation's point (u, v) in fractions of the film's width and height, when the
    #: anatomy prior placed it within its token (:mod:`model.anatomy_prior`); empty: the
    #: token centres.
    points: list[tuple[float, float]] = field(default_factory=list)
    #: The mask decoder's probabilities (F, M) on :attr:`mask_grid`, when the model has
    #: one (``GazeXSettings.mask_decoder``); else the token masks are the finest there are.
    cell_mask_probs: npt.NDArray[np.float32] | None = None
    mask_grid: PatchGrid | None = None

    def finest_masks(self) -> tuple[PatchGrid, npt.NDArray[np.float32]]:
        """The finest mask probabilities the model gave, (F, M), and the grid they are on."""
        if self.cell_mask_probs is not None and self.mask_grid is not None:
            return self.mask_grid, self.cell_mask_probs
        return self.grid, self.mask_probs

    def fixation_points(self) -> list[tuple[float, float]]:
        """SCOORD (x, y) of each fixation: its point, else its token's centre."""
        if self.points:
            return [(u * self.grid.Columns, v * self.grid.Rows) for u, v in self.points]
        return [self.grid.patch_centre(p) for p in self.patch_indices]


def pooled_image_tokens(h_img: torch.Tensor) -> torch.Tensor:
    """(B, 2d): the channel-wise maximum and mean of the image tokens' final hidden states
    (B, N, d), the features of :mod:`model.domain` and the input of the finding head's global
    logit (``GazeXModel.finding_outputs``); float32 whatever the autocast."""
    h = h_img.float()
    return torch.cat([h.amax(dim=1), h.mean(dim=1)], dim=-1)


class _Decoder:
    """Incremental decoding state for one group of images (same grid)."""

    def __init__(
        self, weights: DecoderWeights, batch: int, capacity: int, device: torch.device
    ) -> None:
        self.weights = weights
        self.kv = KVDecoder(weights, batch, capacity, device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)

    def run(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor | None = None,
        live: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Feed (B, L, d) embeddings; ``live`` (B,) or (B, L) False masks tokens out.

        Masked tokens are invisible to later tokens and do not advance the position, so
        left-padding a prompt with masked tokens leaves each row's sequence intact.
        ``positions`` (3, B, L) are M-RoPE positions (the image prefix); without them the
        tokens continue each row's text positions.
        """
        b, length, _ = embeds.shape
        weights = self.weights
        if live is not None and live.ndim == 1:
            live = live[:, None].expand(b, length)
        if positions is not None:
            cos, sin = weights.mrope(positions)
        else:
            if live is None:
                text = self.next_pos[:, None] + torch.arange(length, device=embeds.device)
            else:
                steps = torch.cumsum(live.long(), dim=1) - 1
                text = self.next_pos[:, None] + steps.clamp(min=0)
            cos, sin = weights.text_rope(text)
        hidden = self.kv.forward(embeds, cos, sin, live)
        self.next_pos = self.next_pos + (length if live is None else live.long().sum(dim=1))
        return hidden


@contextmanager
def cpu_threads(device: torch.device, count: int) -> Iterator[None]:
    """Temporarily use ``count`` intra-op threads on CPU.

    Token-by-token decoding multiplies small matrices: one thread is faster than two there,
    and much faster when the cores are shared (OpenMP workers wait on each other).
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _constrain(
    logits: torch.Tensor,
    plan: TokenPlan,
    step: int,
    visited: torch.Tensor,
    previous: torch.Tensor | None,
) -> torch.Tensor:
    """Pointer logits (B, N) restricted to the tokens of ``step`` in ``plan``: first those
    not yet fixated; where a row has none left, those other than the previous fixation; where
    none, all of the step's. A step with no token at all in the plan is left unconstrained
    (but the previous fixation is still excluded)."""
    allowed = torch.from_numpy(plan.allowed[step]).to(logits.device)[None, :]
    if not bool(allowed.any()):
        if previous is not None:
            logits[torch.arange(logits.shape[0], device=logits.device), previous] = float("-inf")
        return logits
    mask = allowed & ~visited
    if previous is not None:
        fallback = allowed.clone().expand_as(visited).clone()
        fallback[torch.arange(logits.shape[0], device=logits.device), previous] = False
    else:
        fallback = allowed.expand_as(visited)
    mask = torch.where(mask.any(dim=1, keepdim=True), mask, fallback)
    mask = torch.where(mask.any(dim=1, keepdim=True), mask, allowed.expand_as(visited))
    return logits.masked_fill(~mask, float("-inf"))


class InferenceEngine:
    """Runs a loaded :class:`GazeXModel` on display images (float32, [0, 1], 1.0 white)."""

    def __init__(
        self, model: GazeXModel, device: torch.device, max_batch: int = 8, threads: int = 1
    ) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.max_batch = max_batch
        #: Intra-op CPU threads while decoding (see :func:`cpu_threads`).
        self.threads = threads
        codec = model.codec
        self.ids = {
            name: codec.id(name) for name in (EOS, GAZE, GAZE_END, PAD, QUESTION, REPORT, ANSWER)
        }
        #: The checkpoint's anatomy prior: the ABCDEF schedule and region atlas that constrain
        #: the pointer (None: unconstrained, the region and step heads label the fixations).
        self.prior: AnatomyPrior | None = load_prior(model.settings)
        self._plans: dict[tuple[int, int, int, int], TokenPlan] = {}

    def _plan(self, grid: PatchGrid) -> TokenPlan | None:
        """The prior's decoding plan of one token grid (cached), None without a prior."""
        if self.prior is None:
            return None
        key = (grid.Rows, grid.Columns, grid.grid_h, grid.grid_w)
        if key not in self._plans:
            self._plans[key] = self.prior.plan(grid)
        return self._plans[key]

    def schedule(self, k: int) -> list[int]:
        """The step index (into STEPS) of each of the ``k`` gaze tokens under the prior: its
        schedule, stretched in order when it was fitted for another K."""
        if self.prior is None:
            return []
        steps = self.prior.schedule
        return [STEPS.index(steps[j * len(steps) // k]) for j in range(k)]

    def run(
        self,
        images: Sequence[npt.NDArray[np.float32]],
        questions: Sequence[str] | Sequence[Sequence[str]] = (),
        generate_text: bool = True,
        on_batch: Callable[[int], object] | None = None,
    ) -> list[RawOutput]:
        """Outputs per image; ``questions`` is shared (list of str) or per image (list of lists).

        ``on_batch`` is called with the number of images after each batch (progress bars).
        """
        spec = self.model.settings.patch_spec
        prepared = [prepare_image(np.asarray(im, dtype=np.float32), spec) for im in images]
        return self.run_prepared(prepared, questions, generate_text, on_batch)

    def run_prepared(
        self,
        prepared: Sequence[ImageInput],
        questions: Sequence[str] | Sequence[Sequence[str]] = (),
        generate_text: bool = True,
        on_batch: Callable[[int], object] | None = None,
    ) -> list[RawOutput]:
        per_image: list[list[str]]
        if questions and not isinstance(questions[0], str):
            per_image = [list(q) for q in questions]
            if len(per_image) != len(prepared):
                raise ValueError("per-image questions must match the images one to one")
        else:
            per_image = [[str(q) for q in questions]] * len(prepared)
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, im in enumerate(prepared):
            groups.setdefault(im.grid_thw, []).append(i)
        results: list[RawOutput | None] = [None] * len(prepared)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                outs = self._run_group(
                    [prepared[i] for i in chunk], [per_image[i] for i in chunk], generate_text
                )
                for i, out in zip(chunk, outs, strict=True):
                    results[i] = out
                if on_batch is not None:
                    on_batch(len(chunk))
        return [r for r in results if r is not None]

    def image_features(
        self,
        prepared: Sequence[ImageInput],
        on_batch: Callable[[int], object] | None = None,
    ) -> npt.NDArray[np.float32]:
        """(len(prepared), 2d) :func:`pooled_image_tokens` of each image: the image prefix
        only (no scanpath, heads or text), for fitting the domain gate."""
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, im in enumerate(prepared):
            groups.setdefault(im.grid_thw, []).append(i)
        rows: list[npt.NDArray[np.float32] | None] = [None] * len(prepared)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                with (
                    torch.inference_mode(),
                    self._autocast(),
                    cpu_threads(self.device, self.threads),
                ):
                    _, _, h_img, _ = self._prefix([prepared[i] for i in chunk], 0)
                    pooled = pooled_image_tokens(h_img).cpu().numpy()
                for i, row in zip(chunk, pooled, strict=True):
                    rows[i] = row
                if on_batch is not None:
                    on_batch(len(chunk))
        return np.stack([r for r in rows if r is not None]).astype(np.float32)

    def _autocast(self) -> torch.autocast:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _prefix(
        self, images: Sequence[ImageInput], extra: int
    ) -> tuple[_Decoder, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Run the image prefix of a group (same grid): (decoder state with room for
        ``extra`` more tokens, padded visual tokens, image-token final hidden states, the
        convolutional branch's feature maps for the mask decoder)."""
        model = self.model
        dev = self.device
        b = len(images)
        n = images[0].grid.num_patches
        pixel_values = torch.from_numpy(patchify(images, model.settings.patch_spec)).to(dev)
        thw = torch.tensor([im.grid_thw for im in images], dtype=torch.long, device=dev)
        feats, maps = model.encode_images(pixel_values, thw)
        img_in, _ = pad_image_tokens(feats)
        ids = torch.tensor([prefix_ids(model.codec, n)] * b, dtype=torch.long, device=dev)
        embeds = model.embed_tokens(ids)
        image_positions = ids == model.image_token_id
        embeds = embeds.masked_scatter(
            image_positions[..., None], torch.cat(feats).to(embeds.dtype)
        )
        positions = model.rope_positions(ids, thw, None)
        # Built per call: the weights may have changed since the engine was made (training).
        weights = DecoderWeights(model.vlm.model.language_model)
        state = _Decoder(weights, b, ids.shape[1] + extra, dev)
        hidden = state.run(embeds, positions)
        state.next_pos = positions.amax(dim=(0, 2)) + 1
        return state, img_in, hidden[:, 1 : 1 + n], maps

    @torch.inference_mode()
    def _run_group(
        self, images: Sequence[ImageInput], questions: Sequence[list[str]], generate_text: bool
    ) -> list[RawOutput]:
        model = self.model
        settings = model.settings
        dev = self.device
        b = len(images)
        grid = images[0].grid
        n = grid.num_patches
        with self._autocast(), cpu_threads(dev, self.threads):
            k = settings.effective_gaze_tokens
            n_questions = max((len(q) for q in questions), default=0)
            extra = k + 3 + settings.max_report_tokens
            extra += n_questions * (32 + settings.max_answer_tokens) if generate_text else 0
            state, img_in, h_img, maps = self._prefix(images, extra)
            pooled = pooled_image_tokens(h_img)
            img_mask = torch.ones(b, n, dtype=torch.bool, device=dev)
            rows = torch.arange(b, device=dev)
            gaze_keys = model.gaze_key(h_img)

            plan = self._plan(grid) if k > 0 else None
            schedule = self.schedule(k) if plan is not None else []
            chosen: list[torch.Tensor] = []
            gaze_probs, regions, steps, timings = [], [], [], []
            points: list[torch.Tensor] = []
            visited = torch.zeros(b, n, dtype=torch.bool, device=dev)
            st = model.embed_tokens(torch.full((b, 1), self.ids[GAZE], device=dev))
            for j in range(k):
                x = st
                if j > 0:
                    x = st + model.gaze_feedback(img_in[rows, chosen[-1]])[:, None, :]
                h = state.run(x)
                logits, region, step, timing = model.gaze_outputs(h, h_img, img_mask, gaze_keys)
                logits = logits[:, 0].clone()
                previous = chosen[-1] if j > 0 else None
                if plan is not None:
                    logits = _constrain(logits, plan, schedule[j], visited, previous)
                elif previous is not None:
                    logits[rows, previous] = float("-inf")
                gaze_probs.append(torch.softmax(logits.float(), dim=-1))
                pick = logits.argmax(dim=-1)
                chosen.append(pick)
                visited[rows, pick] = True
                if plan is not None and self.prior is not None:
                    # The scheduled step, the atlas cell's point and region; a step the plan
                    # has no token for keeps the token centre and the region head's label.
                    s = schedule[j]
                    at = pick.cpu().numpy()
                    head = region[:, 0].argmax(-1).tolist()
                    names = [self.prior.regions[r] if r >= 0 else "" for r in plan.regions[s, at]]
                    regions.append(
                        torch.tensor(
                            [
                                settings.regions.index(r) if r else head[i]
                                for i, r in enumerate(names)
                            ],
                            device=dev,
                        )
                    )
                    steps.append(torch.full((b,), s, dtype=torch.long, device=dev))
                    rr, cc = np.divmod(at, grid.grid_w)
                    centres = np.stack([(cc + 0.5) / grid.grid_w, (rr + 0.5) / grid.grid_h], 1)
                    allowed = plan.allowed[s, at][:, None]
                    points.append(torch.from_numpy(np.where(allowed, plan.points[s, at], centres)))
                else:
                    regions.append(region[:, 0].argmax(-1))
                    steps.append(step[:, 0].argmax(-1))
                timings.append(timing[:, 0].float())
            h_end = state.run(
                model.embed_tokens(torch.full((b, 1), self.ids[GAZE_END], device=dev))
            )[:, 0]
            grid_hw = torch.tensor([[grid.grid_h, grid.grid_w]] * b, device=dev)
            finding_logits, mask_logits, boxes = model.finding_outputs(
                h_end, h_img, img_mask, grid_hw
            )
            cells = model.cell_masks(maps, h_end, h_img, mask_logits, grid_hw)
            reports = [""] * b
            answers: list[list[str]] = [[] for _ in range(b)]
            if generate_text:
                reports = self._generate(
                    state, [[self.ids[REPORT]]] * b, settings.max_report_tokens
                )
                for j in range(n_questions):
                    prompts = [
                        [self.ids[QUESTION], *model.codec.encode(q[j]), self.ids[ANSWER]]
                        if j < len(q)
                        else []
                        for q in questions
                    ]
                    texts = self._generate(state, prompts, settings.max_answer_tokens)
                    for i, q in enumerate(questions):
                        if j < len(q):
                            answers[i].append(texts[i])
        probs = torch.sigmoid(finding_logits.float()).cpu().numpy()
        masks = torch.sigmoid(mask_logits.float()).cpu().numpy()
        cell_masks = None if cells is None else torch.sigmoid(cells[0].float()).cpu().numpy()
        c = settings.mask_cells
        box_np = boxes.float().cpu().numpy()
        pooled_np = pooled.cpu().numpy()
        outs = []
        for i in range(b):
            timing_i = [torch.expm1(t[i]).clamp(min=0).tolist() for t in timings]
            outs.append(
                RawOutput(
                    grid=images[i].grid,
                    patch_indices=[int(c[i]) for c in chosen],
                    regions=[int(r[i]) for r in regions],
                    steps=[int(s[i]) for s in steps],
                    dwell_ms=[float(t[0]) for t in timing_i],
                    gap_ms=[float(t[1]) for t in timing_i],
                    gaze_probs=np.stack([g[i].cpu().numpy() for g in gaze_probs])
                    if gaze_probs
                    else np.zeros((0, n), dtype=np.float32),
                    probabilities=probs[i],
                    boxes=box_np[i],
                    mask_probs=masks[i],
                    report=reports[i],
                    answers=answers[i],
                    image_features=pooled_np[i],
                    points=[(float(p[i, 0]), float(p[i, 1])) for p in points],
                    cell_mask_probs=None if cell_masks is None else cell_masks[i],
                    mask_grid=None if cell_masks is None else images[i].grid.subdivided(c),
                )
            )
        return outs

    def _generate(
        self, state: _Decoder, prompts: Sequence[list[int]], max_tokens: int
    ) -> list[str]:
        """Greedy decoding after each row's prompt (left-padded, masked); an empty prompt
        means the row takes no part. Rows that finished are masked out."""
        model = self.model
        dev = self.device
        eos, pad = self.ids[EOS], self.ids[PAD]
        b = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.tensor(
            [[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=dev
        )
        prompt_live = torch.tensor(
            [[False] * (width - len(p)) + [True] * len(p) for p in prompts], device=dev
        )
        hidden = state.run(model.embed_tokens(ids), live=prompt_live)
        live = [bool(p) for p in prompts]
        tokens: list[list[int]] = [[] for _ in range(b)]
        embedding = model.input_embeddings()
        head: torch.Tensor = model.vlm.lm_head.weight
        head_bias: torch.Tensor | None = model.vlm.lm_head.bias
        for _ in range(max_tokens):
            if not any(live):
                break
            next_ids = functional.linear(hidden[:, -1], head, head_bias).argmax(dim=-1)
            was_live = list(live)
            for i, token in enumerate(next_ids.tolist()):
                if live[i]:
                    if token == eos:
                        live[i] = False
                    else:
                        tokens[i].append(token)
            if all(was_live):
                fed, fed_live = next_ids, None
            else:
                mask = torch.tensor(was_live, device=dev)
                fed, fed_live = torch.where(mask, next_ids, torch.full_like(next_ids, eos)), mask
            # A row that just produced EOS still feeds it: EOS ends the turn in training too.
            hidden = state.run(functional.embedding(fed[:, None], embedding), live=fed_live)
        return [model.codec.decode(t) for t in tokens]
