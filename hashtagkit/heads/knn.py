"""kNN label transfer: an image gets the hashtags of its nearest training images.

Features are L2-normalised so inner product is cosine similarity, then by default reduced by
a PCA to `pca` = 256 dimensions and normalised again (`pca=null` keeps all dimensions: the index
then holds 8,192 floats a row, which does not scale); the PCA drops noise dimensions, which
helps both P@1 and prediction time (benchmarks/results/knn_ovr_size.md). Each of the k
neighbours votes for its hashtags
with weight exp(similarity / temperature); the votes are divided by their sum, so scores are in
[0, 1] per image (clipped there: a float32 rounding never makes one 1.0000001). `predict`
recommends a hashtag carried by more than half of the neighbours' weight.

At size (issue #13): the PCA is fitted on a seeded sample of FIT_ROWS rows and the vectors are
added block by block, so no float32 copy of the training features ever exists; the labels are
kept as per-row lists of hashtag ids (~20 bytes a row, not 997). The index is chosen from the
data size and recorded with its measured recall (`fit_report`): exact `Flat` up to
`exact_limit` rows (200,000; HARRISON has 52k), above it IVF whose vectors are stored as finely
as `index_mb` allows: whole (4 bytes a dimension), 8-bit scalar-quantized (1 byte a dimension,
1 M rows x 256 in 256 MB) or product-quantized (32 bytes a vector at 256 dimensions). `hnsw`
stays an explicit choice (fast queries, but ~300 bytes a vector more). A GPU copy when faiss
sees GPUs.

An approximate index is only as good as its search breadth, and the breadth a dataset needs is
not known in advance: on clustered photo features a few IVF lists hold the neighbours, on
features without cluster structure (the planted stores: signal plus isotropic noise) the
neighbours are spread over all lists, where a fixed nprobe finds few of them
(benchmarks/results/knn_ovr_size.md). So the breadth (IVF's nprobe, HNSW's efSearch) is tuned after the index is built:
doubled from its default until recall@k against exact search on RECALL_QUERIES training rows
reaches `target_recall` (0.9), or the whole index is searched; the curve is recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from hashtagkit.heads.base import BLOCK_WEIGHTS, BlockWeights, Laps, Param
from hashtagkit.heads.data import TrainingData
from hashtagkit.heads.estimator import HeadEstimator
from hashtagkit.heads.projection import fit_projection, project, sample_positions

EXACT_LIMIT = 200_000  # exact search up to here: 200k x 256 float32 = 205 MB; HARRISON has 52k
INDEX_MB = 256  # above EXACT_LIMIT: IVF vectors stored as finely as this allows (flat, 8-bit SQ, PQ)
TARGET_RECALL = 0.9  # search breadth tuned until recall@k against exact search reaches this
PQ_MIN_TRAIN = 256  # an 8-bit product quantizer trains 256 centroids per sub-vector
RECALL_QUERIES = 1000  # training rows whose approximate neighbours are checked against exact ones
INDEX_FILE, LABELS_FILE = "index.faiss", "labels.npz"


def _normalised(X: np.ndarray, copy: bool = True) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32; `copy=False` for an array the caller
    owns already in that form (it is normalised in place)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if copy:
        X = X.copy()
    faiss.normalize_L2(X)
    return X


def _label_lists(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of multi-hot labels as (hashtags per row, their class ids in row order): the
    compact lists kNN votes from, a few bytes a row instead of C."""
    rows, cols = np.nonzero(Y)
    return np.bincount(rows, minlength=len(Y)), cols.astype(np.int32)


class _TopK:
    """Exact top-k inner products of a few query vectors, kept up to date block by block."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries, self.k = queries, k
        self.sims = np.full((len(queries), 0), -np.inf, np.float32)
        self.ids = np.zeros((len(queries), 0), np.int64)

    def update(self, Z: np.ndarray, offset: int) -> None:
        sims = np.concatenate([self.sims, self.queries @ Z.T], axis=1)
        ids = np.concatenate([self.ids, np.broadcast_to(offset + np.arange(len(Z)), (len(self.queries), len(Z)))], axis=1)
        keep = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]
        self.sims, self.ids = np.take_along_axis(sims, keep, 1), np.take_along_axis(ids, keep, 1)


class KNNHead(HeadEstimator):
    name = "knn"
    param_spec = {
        "k": Param(int, low=1),
        "temperature": Param(float, low=0, low_open=True),
        "pca": Param(int, low=1, none=True, none_means="no PCA"),
        "index": Param(str, choices=("auto", "flat", "hnsw", "ivf", "ivfsq", "ivfpq")),
        "batch_size": Param(int, low=1),
        "exact_limit": Param(int, low=1),
        "index_mb": Param(float, low=0, low_open=True),
        "target_recall": Param(float, low=0, low_open=True, high=1, none=True,
                               none_means="the default search breadth, not tuned"),
        "random_state": Param(int, low=0, high=2**32 - 1),
        "block_weights": BlockWeights(str),
    }
    block_rule = "l2"  # each backbone's block unit-normalised, so cosine weighs them by their shares

    def __init__(self, k: int = 50, temperature: float = 0.05, pca: int | None = 256, index: str = "auto",
                 batch_size: int = 1024, exact_limit: int = EXACT_LIMIT, index_mb: float = INDEX_MB,
                 target_recall: float | None = TARGET_RECALL, random_state: int = 0,
                 block_weights: str = BLOCK_WEIGHTS) -> None:
        self.k = k
        self.temperature = temperature
        self.pca = pca
        self.index = index
        self.batch_size = batch_size
        self.exact_limit = exact_limit
        self.index_mb = index_mb
        self.target_recall = target_recall
        self.random_state = random_state
        self.block_weights = block_weights

    # --- fitting ------------------------------------------------------------------------------
    def _unit_rows(self, X: np.ndarray) -> np.ndarray:
        """X's blocks joined (`_combine`, which copies to float32) and its rows unit-normalised:
        one copy of a block, not two."""
        Z = self._combine(X)
        return _normalised(Z, copy=Z is X)

    def _embed(self, X: np.ndarray) -> np.ndarray:
        Z = self._unit_rows(X)
        if self.projection_["components"].size:
            Z = _normalised(project(Z, self.projection_), copy=False)  # project made a new array
        return Z

    def _index_kind(self, d: int, n: int) -> str:
        if self.index != "auto":
            return self.index
        if n <= self.exact_limit:
            return "flat"
        budget = self.index_mb * 2**20
        return "ivf" if n * d * 4 <= budget else "ivfsq" if n * d <= budget else "ivfpq"

    def _build_index(self, kind: str, d: int, n: int, n_train: int):
        """The FAISS index and its description. IVF lists: ~4 sqrt(n), at most one per 39
        training vectors (FAISS's own minimum); nprobe starts at 1/16 of them, at least 16 (then
        tuned, see `_tune_breadth`). SQ: 8 bits a dimension. PQ: d/8 sub-quantizers of 8 bits
        (32 bytes a vector at d=256, against 1,024 flat)."""
        nlist = int(max(1, min(4 * np.sqrt(n), n_train // 39)))
        if kind == "flat":
            return faiss.IndexFlatIP(d), "IndexFlatIP (exact cosine)"
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = max(64, 2 * self.k)
            return index, "IndexHNSWFlat M=32 (approximate cosine)"
        if kind == "ivfpq" and n_train < PQ_MIN_TRAIN:
            # 8-bit PQ codebooks are k-means with 256 centroids: FAISS refuses fewer training
            # vectors. So few rows are small anyway: keep their vectors whole.
            index, desc = self._build_index("ivf", d, n, n_train)
            return index, f"{desc}; not PQ: {n_train} training vectors < {PQ_MIN_TRAIN}"
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index, desc = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT), f"IndexIVFFlat nlist={nlist}"
        elif kind == "ivfsq":
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
            desc = f"IndexIVFScalarQuantizer nlist={nlist} 8bit"
        elif kind == "ivfpq":
            m = next(m for m in (d // 8, d // 4, d // 2, d, 1) if m >= 1 and d % m == 0)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            desc = f"IndexIVFPQ nlist={nlist} m={m}x8bit"
        else:
            raise ValueError(f"index must be auto, flat, hnsw, ivf, ivfsq or ivfpq, got {self.index!r}")
        index.nprobe = min(nlist, max(16, nlist // 16))
        return index, f"{desc} (approximate cosine)"

    @staticmethod
    def _breadth(index) -> tuple[str, int, int]:
        """The search breadth knob of an approximate index: (name, value, largest useful value)."""
        if isinstance(index, faiss.IndexHNSW):
            return "efSearch", index.hnsw.efSearch, max(4096, index.hnsw.efSearch)
        return "nprobe", index.nprobe, index.nlist

    def _tune_breadth(self, index, queries: np.ndarray, exact_ids: np.ndarray) -> dict:
        """Double the search breadth from its default until recall@k of `queries` against their
        exact neighbours reaches `target_recall`, or the breadth is the largest useful one (all
        IVF lists: then only the vectors' quantization limits recall). Returns what the run
        records: the breadth chosen, its recall and the curve measured on the way."""
        name, value, top = self._breadth(index)
        k = exact_ids.shape[1]
        curve = []
        while True:
            if name == "efSearch":
                index.hnsw.efSearch = value
            else:
                index.nprobe = value
            found = index.search(queries, k)[1]
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact_ids, strict=True)]))
            curve.append([value, round(recall, 4)])
            if self.target_recall is None or recall >= self.target_recall or value >= top:
                break
            value = min(2 * value, top)
        report = {f"recall@{k}": round(recall, 4), "recall_queries": int(len(queries)), name: value,
                  "recall_curve": {"breadth": name, "points": curve}}
        if self.target_recall is not None:
            report.update({"target_recall": self.target_recall, "target_met": bool(recall >= self.target_recall)})
        return report

    def fit_data(self, data: TrainingData) -> KNNHead:
        """Build the index block by block: the PCA is fitted on a seeded sample of at most
        FIT_ROWS rows (the only rows held at once), then each block is normalised, projected
        and added as float32. An approximate index is trained on that sample too, and its
        recall@k against exact search is measured on RECALL_QUERIES training rows whose exact
        neighbours are kept up to date block by block, so no second pass is needed; the search
        breadth is then tuned on them (`_tune_breadth`)."""
        self._begin_fit(data)
        self._gpu_index = None  # a GPU copy of a previous fit's index would answer the searches
        laps, n = Laps(), data.n_rows
        rng = np.random.default_rng(self.random_state)
        sample = sample_positions(data, rng)
        self._fit_blocks(data)
        Zs = self._unit_rows(data.take(sample)[0])
        self.projection_ = fit_projection(Zs, self.pca or 0, whiten=False, random_state=self.random_state)
        if self.projection_["components"].size:
            Zs = _normalised(project(Zs, self.projection_), copy=False)
        d = Zs.shape[1]
        kind = self._index_kind(d, n)
        index, self.index_desc_ = self._build_index(kind, d, n, len(Zs))
        laps.lap("sample_and_pca")
        if not index.is_trained:
            index.train(Zs)
        laps.lap("train_index")
        queries = Zs[np.sort(rng.choice(len(Zs), min(len(Zs), RECALL_QUERIES), replace=False))] if kind != "flat" else None
        del Zs
        exact = _TopK(queries, min(self.k, n)) if queries is not None else None
        from tqdm import tqdm

        indptr, indices, offset = [np.zeros(1, np.int64)], [], 0
        for X, Y in tqdm(data.blocks(), total=data.n_blocks, desc=f"{self.name} index", unit="block", disable=None,
                         leave=False):
            Z = self._embed(X)
            index.add(Z)
            if exact is not None:
                exact.update(Z, offset)
            counts, cols = _label_lists(Y)
            indptr.append(indptr[-1][-1] + np.cumsum(counts))
            indices.append(cols)
            offset += len(Y)
        self.index_ = index
        self.label_indptr_ = np.concatenate(indptr)
        self.label_indices_ = np.concatenate(indices) if indices else np.zeros(0, np.int32)
        laps.lap("read_embed_add")
        self.report_ = {"index": self.index_desc_, "n_indexed": int(index.ntotal), "dim": int(d),
                        "pca_fit_rows": int(len(sample)) if self.projection_["components"].size else 0}
        if exact is not None:
            self.report_.update(self._tune_breadth(index, queries, exact.ids))
            name = self.report_["recall_curve"]["breadth"]
            self.index_desc_ = self.index_desc_.replace(" (approximate", f" {name}={self.report_[name]} (approximate")
            self.report_["index"] = self.index_desc_
            laps.lap("tune_breadth")
        self.report_["seconds"] = laps.seconds
        return self

    def _searcher(self):
        """The index to search: a GPU copy when faiss sees GPUs and has one for this index type
        (FAISS's GPU code has none for HNSW: those are searched on the CPU), made once."""
        if faiss.get_num_gpus() > 0 and hasattr(faiss, "index_cpu_to_all_gpus"):
            if getattr(self, "_gpu_index", None) is None:
                try:
                    self._gpu_index = faiss.index_cpu_to_all_gpus(self.index_)
                except RuntimeError:  # not implemented for this index type
                    self._gpu_index = self.index_
            return self._gpu_index
        return self.index_

    # --- scoring ------------------------------------------------------------------------------
    def kneighbors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, training row ids) of the k nearest neighbours, most similar first."""
        return self._neighbours(self._check_x(X))

    def _neighbours(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`kneighbors` on rows already checked (predict_proba checks its input once, not per batch)."""
        return self._searcher().search(self._embed(X), min(self.k, self.index_.ntotal))

    def _predict_scores(self, X: np.ndarray) -> np.ndarray:
        """The weighted votes (n, C), batch by batch, clipped to [0, 1]: a vote share can round
        above 1 by an ulp, and a probability never exceeds 1."""
        out = np.zeros((len(X), self.n_classes_), dtype=np.float32)
        for start in range(0, len(X), self.batch_size):
            sims, ids = self._neighbours(X[start : start + self.batch_size])
            out[start : start + len(sims)] = self._weighted_votes(sims, ids, self._vote_temperature())
        return np.clip(out, 0, 1, out=out)

    def _vote_temperature(self) -> float:
        """The T of the votes' weights exp(similarity / T): the parameter (tagprop learns its own)."""
        return self.temperature

    def _weighted_votes(self, sims: np.ndarray, ids: np.ndarray, temperature: float) -> np.ndarray:
        """(b, C) scores of a batch's neighbours: each votes for its hashtags with weight
        exp(similarity / T), divided by the weights' sum (missing neighbours, id -1, weigh 0)."""
        if sims.shape[1] == 0:
            return np.zeros((len(sims), self.n_classes_), dtype=np.float32)
        # shifted (no overflow, same ratios) and in float64: a float32 difference divided by a tiny T
        # (1e-300 rounds to 0 in float32) is 0/0 = NaN for the nearest neighbour
        sims = np.asarray(sims, dtype=np.float64)
        with np.errstate(over="ignore"):  # -inf for a far neighbour at a tiny T: weight 0, as it should be
            weights = np.exp((sims - sims[:, :1]) / float(temperature))
        weights[ids < 0] = 0
        return self._votes(ids, weights) / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)

    def _votes(self, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(b, C) summed weights of the neighbours' hashtags, from the compact label lists:
        each (query, hashtag of a neighbour) pair adds that neighbour's weight."""
        b, k = ids.shape
        flat = np.maximum(ids, 0).ravel()
        starts, stops = self.label_indptr_[flat], self.label_indptr_[flat + 1]
        lengths = stops - starts
        total = int(lengths.sum())
        first = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        classes = self.label_indices_[first + np.arange(total)]
        query = np.repeat(np.repeat(np.arange(b), k), lengths)
        w = np.repeat(weights.ravel(), lengths)
        return np.bincount(query * self.n_classes_ + classes, weights=w, minlength=b * self.n_classes_).reshape(b, -1)

    # --- persistence --------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        """Pickled without the GPU copy of the index (made again on first search); the index
        itself pickles through faiss's own serialisation."""
        state = super().__getstate__()
        state.pop("_gpu_index", None)
        return state

    def _save_state(self, directory: Path) -> None:
        faiss.write_index(self.index_, str(directory / INDEX_FILE))
        np.savez_compressed(directory / LABELS_FILE, label_indptr=self.label_indptr_, label_indices=self.label_indices_,
                            n_classes=self.n_classes_, index_desc=self.index_desc_,
                            report=json.dumps(self.fit_report()),
                            **{f"projection_{k}": v for k, v in self.projection_.items()})

    def _load_state(self, directory: Path) -> None:
        self.index_ = faiss.read_index(str(directory / INDEX_FILE))
        with np.load(directory / LABELS_FILE) as data:
            if "labels" in data:  # saved before the compact lists: a packed N x C bit matrix
                counts, self.label_indices_ = _label_lists(
                    np.unpackbits(data["labels"], axis=1, count=int(data["n_classes"])))
                self.label_indptr_ = np.r_[0, np.cumsum(counts)].astype(np.int64)
            else:
                self.label_indptr_, self.label_indices_ = data["label_indptr"], data["label_indices"]
            self.index_desc_ = str(data["index_desc"])
            # saved before the report existed: the index is what it can still tell
            self.report_ = json.loads(str(data["report"])) if "report" in data else {"index": self.index_desc_}
            self.projection_ = {k: data[f"projection_{k}"] for k in ("mean", "components", "scale")}
