"""Why the text CNN answered 5 stars to every review on the BERT jobs' slice, and the learning rate that fixed it.

Trains ``jobs/reviews-bert-cnn.yaml``'s student (``text_cnn``, dim 16, 16 filters) as the distill stage does
(AdamW, the one_cycle schedule over the rows, ``methods.losses.objective``: hinton KD on every row, CE on the
labelled ones), in one process without Ray, on the first ``--rows`` training reviews, the first ``--labelled`` of
them with their labels and the rest with the soft labels of a committed entry (``--labels``; none: the labelled
rows alone, the scratch twin). Validates on the training split's last ``--val`` reviews, which the jobs never read
(their ``data.limit`` stops well before them), never on the test split. Prints the teacher's soft labels (entropy,
argmax spread, agreement with the hidden labels), per epoch the loss terms, the accuracy on the labelled rows and
the validation rows with the predicted classes, and how far the embeddings moved from their initialisation.

    python benchmarks/text_cnn_lr.py --labels store/softlabels/<key> --rows 5000 --epochs 20 --lr 0.01
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distkd.data.source import UNLABELLED
from distkd.data.tokenizer import Tokenizer, wordpiece
from distkd.methods.losses import Targets, objective
from distkd.methods.optim import one_cycle
from distkd.models.text import TextCNN

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "womens-reviews"


def soft_labels(entry: str, ids: list[str]) -> torch.Tensor:
    """The entry's logits for ``ids``, in that order (its shards read by id: their order is the units')."""
    folder = Path(entry)
    by_id = {}
    for shard in json.loads((folder / "manifest.json").read_text())["shards"]:
        table = pq.read_table(folder / shard["file"]).to_pydict()
        by_id.update(zip(table["id"], table["logits"]))
    return torch.tensor(np.array([by_id[i] for i in ids], dtype=np.float32))


def describe(logits: torch.Tensor, labels: torch.Tensor, labelled: int, temperature: float) -> None:
    p = logits.softmax(1)
    entropy = -(p * p.log()).sum(1)
    for name, rows in (("labelled", slice(0, labelled)), ("unlabelled", slice(labelled, None))):
        argmax = np.bincount(p[rows].argmax(1).numpy(), minlength=p.shape[1])
        agree = (p[rows].argmax(1) == labels[rows]).float().mean()
        print(
            f"teacher on the {name} rows: entropy {entropy[rows].mean():.3f} nats "
            f"(uniform {math.log(p.shape[1]):.3f}), "
            f"top probability {p[rows].max(1).values.mean():.3f}, argmax per class {argmax}, "
            f"agrees with the hidden label {agree:.3f}"
        )
    at_t = (logits / temperature).softmax(1)
    print(f"  at T {temperature}: entropy {-(at_t * at_t.log()).sum(1).mean():.3f} nats")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labels", help="a committed soft-label entry (<store>/softlabels/<key>); none: the scratch twin")
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--labelled", type=int, default=800)
    p.add_argument("--val", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)

    train = pa.concat_tables(
        pq.read_table(f, columns=["id", "text", "label"]) for f in sorted(DATA.glob("train-*.parquet"))
    )
    ids, texts, labels = train["id"].to_pylist(), train["text"].to_pylist(), np.asarray(train["label"])
    tokenizer, trainer = wordpiece(8000)  # as data.tokenizer trains it: on the rows in use
    tokenizer.train_from_iterator(texts[: a.rows], trainer)
    file = Path(tempfile.mkdtemp()) / "tokenizer.json"
    tokenizer.save(str(file))
    encode = Tokenizer(str(file), 128, tokenizer.get_vocab_size() + 1)
    x = torch.from_numpy(encode.encode(texts[: a.rows])[0]).long()
    x_val = torch.from_numpy(encode.encode(texts[-a.val :])[0]).long()
    y_true = torch.from_numpy(labels[: a.rows].copy())
    y_val = labels[-a.val :]
    y = y_true.clone()
    y[a.labelled :] = UNLABELLED
    if a.labels:
        teacher = soft_labels(a.labels, ids[: a.rows])
        describe(teacher, y_true, a.labelled, a.temperature)
        rows, alpha = torch.arange(a.rows), a.alpha
    else:
        teacher, rows, alpha = torch.zeros(a.rows, 5), torch.arange(a.labelled), 0.0
    prior = np.bincount(labels[: a.labelled], minlength=5) / a.labelled
    print(
        f"{len(rows)} rows trained on, {a.labelled} labelled; "
        f"the labels' prior: CE {-(prior * np.log(prior)).sum():.4f}, "
        f"validation majority {np.bincount(y_val).max() / a.val:.4f}"
    )

    model = TextCNN(5, vocab_size=encode.vocab_size, dim=16, filters=16)
    start = model.embed.weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    done, total = 0, a.epochs * len(rows)
    for epoch in range(1, a.epochs + 1):
        model.train()
        losses = []
        for batch in rows[torch.randperm(len(rows))].split(a.batch_size):
            for group in opt.param_groups:
                group["lr"] = a.lr * one_cycle(done / total)
            loss = objective("hinton", model(x[batch]), Targets(logits=teacher[batch]), y[batch], alpha, a.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += len(batch)
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            seen = model(x[: a.labelled]).argmax(1).numpy()
            val = torch.cat([model(part).argmax(1) for part in x_val.split(500)]).numpy()
            print(
                f"epoch {epoch}: loss {np.mean(losses):.4f}  "
                f"labelled rows acc {(seen == labels[: a.labelled]).mean():.4f}  "
                f"validation acc {(val == y_val).mean():.4f}, predicted per class {np.bincount(val, minlength=5)}",
                flush=True,
            )
    used = torch.unique(x[rows])
    used = used[used != 0]
    moved = (model.embed.weight.detach() - start)[used].norm(dim=1) / start[used].norm(dim=1)
    print(f"embeddings of the {len(used)} ids in use moved {moved.median():.3f} of their norm (median)")


if __name__ == "__main__":
    main()
