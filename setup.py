"""hashtagkit: hashtag recommendation for photos, built around the HARRISON benchmark.

`stores/` and `cli/` are top-level folders in the repository (the design card's layout) but are
installed as `hashtagkit.stores` and `hashtagkit.cli`, so no top-level module named `cli` or
`stores` lands in site-packages.
"""

from setuptools import setup

DISTRIBUTED = ["dask>=2024.1", "distributed>=2024.1"]
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9"]

setup(
    name="hashtagkit",
    version="0.1.0",
    description="Hashtag recommendation for photos: feature store, interchangeable heads, HARRISON metrics",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "hashtagkit",
        "hashtagkit.data",
        "hashtagkit.heads",
        "hashtagkit.backbones",
        "hashtagkit.serve",
        "hashtagkit.stores",
        "hashtagkit.cli",
    ],
    package_dir={"hashtagkit.stores": "stores", "hashtagkit.cli": "cli"},
    package_data={"hashtagkit": ["static/*"]},  # the upload page `hashtagkit serve` shows at GET /
    install_requires=[
        "torch>=2.4,<=2.14.1",  # 2.4: fused AdamW on CPU, torch.amp.GradScaler("cpu")
        "torchvision>=0.19,<=0.29.1",
        "faiss-cpu>=1.7.4",
        "scikit-learn>=1.3",
        "numpy>=1.24",
        "zarr>=3.1.3,<4",  # 3.1.3: the local store writes files atomically (crash safety)
        "nltk>=3.8",
        "click>=8.1",
        "tqdm>=4.60",
        "Pillow>=10.0",
        "matplotlib>=3.7",
    ],
    extras_require={
        # faiss ships its GPU build as a separate wheel; install it in place of faiss-cpu.
        "gpu": ["faiss-gpu-cu12>=1.8"],
        # `extract --cluster/--scheduler`: Dask distributed (add dask-cuda for one worker per GPU)
        "distributed": DISTRIBUTED,
        # `hashtagkit serve`: the JSON API and upload page
        "serve": SERVE,
        # playwright drives the system's Chromium (/usr/bin/chromium) in the browser tests
        "test": ["pytest>=7", "ruff>=0.4", "hypothesis>=6.80", "httpx>=0.27", "playwright>=1.40", "xarray>=2024.1",
                 "schemathesis>=4.0",
                 *DISTRIBUTED, *SERVE],
    },
    entry_points={"console_scripts": ["hashtagkit=hashtagkit.cli.main:main"]},
)
