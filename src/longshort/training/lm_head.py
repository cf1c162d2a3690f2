"""Token log-probabilities for training where TRL's fused LM head has no kernel (the CPU).

TRL's `SFTTrainer` and `GRPOTrainer` read their log-probabilities through a fused, chunked LM
head (`trl.kernels.chunked_logprob`), which never builds the full logits. On CUDA and XPU it runs
Triton kernels over the labelled positions only. Elsewhere the same tiles are folded in torch:
every position of every sequence goes through the head (the prompt's too), and the backward
accumulates its products in fp32 even when the model trains in bf16. On the 2-core CPU, with
SmolLM2-135M (a 49,152-token vocabulary) at batch 1 × 8 with checkpointing, that head took 40%
of an SFT step (cProfile of `longshort sft`; docs/training.md has the A/B).

The mixins here (each goes before its TRL trainer in the class's bases) compute the same
quantities from the model's own forward with `logits_to_keep` set to the positions that are
scored. The head then runs in the training dtype (the autocast dtype under mixed precision, as a
plain `transformers.Trainer` runs it) and the log-softmax in fp32. The logits they build are
only those positions' (~300 × 49,152 floats for a planted trace; GRPO's micro-batches are
split by `LOGITS_BUDGET`):

- `CompactHeadLoss.compute_loss` (SFT): the negative log-likelihood of the completion's tokens,
  summed and divided by `num_items_in_batch`, with TRL's `entropy`, `mean_token_accuracy` and
  `num_tokens` metrics;
- `CompactHeadLogprobs._get_per_token_logps_and_entropies` (GRPO): the completion tokens'
  log-probabilities at the sampling temperature, and their entropies (zero on padding, as TRL's).

Anything they do not cover (label smoothing, `compute_loss_func`, DFT loss, MoE auxiliary losses,
images, `return_outputs`, padding-free batches) goes to TRL's own code. The recipes' `compact_head`
(SFT and RL) chooses: None (the default) uses them where TRL would fold tiles in torch, i.e. off
CUDA/XPU; True or False forces them on or off. `trainer_class` builds the class.
"""

from __future__ import annotations

from typing import Any

#: Most logits (floats) one forward pass of `CompactHeadLogprobs` builds: GRPO's micro-batches are
#: split into rows that fit (64 MB of fp32 logits; one 400-token dialogue of a 49k vocabulary).
LOGITS_BUDGET = 1 << 24

COMPACT_HEAD_HELP = ("compute token log-probabilities from the scored positions' logits only, in the training "
                     "dtype (`training.lm_head`); None = where TRL's fused LM head has no Triton kernel (off CUDA/XPU)")


def use_compact_head(choice: bool | None, device_type: str) -> bool:
    """Whether a run uses the compact head: `choice` when set, else on every device but the ones
    TRL has Triton kernels for (CUDA, XPU)."""
    return choice if choice is not None else device_type not in ("cuda", "xpu")


def trainer_class(base: type, choice: bool | None, device_type: str) -> type:
    """`base` (TRL's SFTTrainer or GRPOTrainer), with the compact head mixed in when
    `use_compact_head(choice, device_type)`."""
    if not use_compact_head(choice, device_type):
        return base
    mixin = CompactHeadLoss if base.__name__ == "SFTTrainer" else CompactHeadLogprobs
    return type(f"CompactHead{base.__name__}", (mixin, base), {})


def _entropy(logp: Any) -> Any:
    """Entropy of each row's distribution, from its log-probabilities (last dimension)."""
    return -(logp.exp() * logp).sum(-1)


class CompactHeadLoss:
    """Mixin for TRL's `SFTTrainer`: the loss from the labelled positions' logits only."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if (return_outputs or "labels" not in inputs or "attention_mask" not in inputs
                or self.compute_loss_func is not None or self.label_smoother is not None
                or self.aux_loss_enabled or self.args.loss_type != "nll"):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        import torch

        labels = inputs["labels"]
        keep = torch.zeros_like(labels, dtype=torch.bool)  # the logits at p predict the label at p + 1
        keep[:, :-1] = labels[:, 1:] != -100
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        logits = model(**forward, use_cache=False, logits_to_keep=keep).logits.float()  # (N, V), flattened
        target = labels[:, 1:][keep[:, :-1]]
        logp = torch.log_softmax(logits, dim=-1)
        count = target.numel() if num_items_in_batch is None else num_items_in_batch
        loss = -logp.gather(-1, target[:, None]).sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._log_metrics(inputs, logp.detach(), logits.detach(), target)
        return loss

    def _log_metrics(self, inputs: dict[str, Any], logp: Any, logits: Any, target: Any) -> None:
        """TRL's SFT metrics: entropy and top-1 accuracy over the labelled tokens, tokens seen."""
        import torch

        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        with torch.no_grad():
            valid = gather(torch.as_tensor(target.numel(), device=target.device)).sum()
            entropy = gather(_entropy(logp).sum()).sum()
            correct = gather((logits.argmax(-1) == target).sum()).sum()
        self._metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


class CompactHeadLogprobs:
    """Mixin for TRL's `GRPOTrainer`: the completion's log-probabilities and entropies from its
    positions' logits only, at the sampling temperature."""

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):
        if compute_aux_loss or any(v is not None for v in extra.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)
        import torch

        entropy_grad = bool(getattr(self.args, "entropy_coef", 0.0) or getattr(self.args, "use_adaptive_entropy", False))
        vocab = self.model.config.get_text_config().vocab_size
        fit = max(1, LOGITS_BUDGET // ((logits_to_keep + 1) * vocab))  # rows whose logits stay within the budget
        batch_size = min(batch_size or input_ids.size(0), fit)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
            with self.accelerator.autocast():
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False,
                               logits_to_keep=logits_to_keep + 1).logits
            logp = torch.log_softmax(logits[:, :-1].float() / self.temperature, dim=-1)
            real = mask[:, -logits_to_keep:].to(logp.dtype)  # TRL's fused head gives 0 on padding
            logps.append(logp.gather(-1, ids[:, -logits_to_keep:, None]).squeeze(-1) * real)
            if compute_entropy:
                with torch.set_grad_enabled(torch.is_grad_enabled() and entropy_grad):
                    entropies.append(_entropy(logp) * real)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None
