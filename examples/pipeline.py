"""The whole hashtagkit pipeline from Python, on the synthetic demo photos.

    python examples/pipeline.py --out /tmp/hk-example [--n 200] [--heads knn,ovr]

prepare (a demo store) -> extract (VGG-16 object + scene features) -> fit each head ->
evaluate -> recommend for a few photos -> your own model on `store.arrays`. No pretrained
weights can be downloaded on our machines, so by default the backbones are RANDOM VGG-16
weights (recorded as such in the store); pass `--backbone vgg16-object=PATH --backbone
vgg16-scene=PATH` with real weights files for real features.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import hashtagkit as hk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="A folder for the store, runs and images.")
    ap.add_argument("--n", type=int, default=200, help="Demo photos to draw.")
    ap.add_argument("--heads", default="knn,ovr,popularity", help="Heads to fit, comma separated.")
    ap.add_argument("--backbone", action="append", help="NAME=PATH|random (repeatable).")
    args = ap.parse_args()
    backbones = args.backbone or ["vgg16-object=random", "vgg16-scene=random"]

    store = hk.prepare.demo(args.out / "demo.zarr", n=args.n, seed=0, overwrite=True)
    print(f"store: {store.n_rows} photos, {store.n_classes} hashtags, split {store.split_info['counts']}")

    with warnings.catch_warnings():  # random weights warn loudly; the provenance says so too
        warnings.simplefilter("ignore")
        summary = hk.extract(store, backbones, device="auto", progress=False, log=lambda line: None)
    print(summary.text())

    photos = [args.out / "demo_images" / p for p in store.paths()[:3]]
    for head in args.heads.split(","):
        run = hk.fit(store, head, args.out / "runs" / head, view="both", overwrite=True)
        scores = hk.evaluate(run, split="test", ks=(1, 5))
        print(f"{head:>10}: P@1 {scores['precision@1']:.3f}  R@5 {scores['recall@5']:.3f}  "
              f"A@5 {scores['accuracy@5']:.3f}  (fit {run.record.fit_seconds:.1f}s)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            answers = hk.Recommender.from_run(run, device="cpu").recommend(photos, top=3)
        for answer in answers:
            print(f"{'':>12}{answer.image}: " + " ".join(f"#{tag}" for tag, _ in answer.hashtags))

    # your own model on the same features: any scikit-learn estimator
    from sklearn.neighbors import KNeighborsClassifier

    X, Y = store.arrays(view="both", split="train")
    Xt, Yt = store.arrays(view="both", split="test")
    own = KNeighborsClassifier(n_neighbors=5).fit(X, Y)  # multilabel: Y is the (n, C) 0/1 matrix
    print(f"{'sklearn':>10}: subset accuracy on test {own.score(Xt, Yt):.3f} ({X.shape[1]} features)")


if __name__ == "__main__":
    main()
