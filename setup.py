"""hashtagkit: hashtag recommendation for photos, built around the HARRISON benchmark.

`stores/` and `cli/` are top-level folders in the repository (the design card's layout) but are
installed as `hashtagkit.stores` and `hashtagkit.cli`, so no top-level module named `cli` or
`stores` lands in site-packages.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

# Import name -> folder in the repository. Every package under these folders (any folder with an
# __init__.py) is found, so a subpackage added later cannot be left out of the wheel by a stale list;
# tests/project/test_packaging.py compares the built wheel against the source tree.
PACKAGE_DIRS = {"hashtagkit": "hashtagkit", "hashtagkit.stores": "stores", "hashtagkit.cli": "cli"}
PACKAGES = [sub for name, folder in PACKAGE_DIRS.items()
            for sub in (name, *(f"{name}.{found}" for found in find_packages(HERE / folder)))]

DISTRIBUTED = ["dask>=2024.1", "distributed>=2024.1"]
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9"]
S3 = ["s3fs>=2024.12"]  # 2024.12: conditional writes (the store's lease); gs:// needs gcsfs, az:// adlfs

setup(
    name="hashtagkit",
    version="0.1.0",
    description="Hashtag recommendation for photos: feature store, interchangeable heads, HARRISON metrics",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={name: folder for name, folder in PACKAGE_DIRS.items() if name != folder},
    package_data={"hashtagkit": ["static/*"]},  # the upload page `hashtagkit serve` shows at GET /
    install_requires=[
        # No upper bounds: newer releases are the user's to take. The versions this project is tested
        # with are pinned in constraints.txt (`make install` installs with it), not here.
        "torch>=2.4",  # 2.4: fused AdamW on CPU, torch.amp.GradScaler("cpu")
        "torchvision>=0.19",
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
        # stores and photos at s3:// URLs
        "s3": S3,
        # playwright drives the system's Chromium (/usr/bin/chromium) in the browser tests
        "test": ["pytest>=7", "ruff>=0.4", "hypothesis>=6.80", "httpx>=0.27", "playwright>=1.40", "xarray>=2024.1",
                 "schemathesis>=4.0",
                 # object storage: moto's S3 server (as s3fs and zarr test themselves); webdataset writes
                 # the shards the tests read
                 "moto[s3]>=5.0", "flask>=2.2", "flask-cors>=4.0", "boto3>=1.34", "webdataset>=0.2", *S3,
                 # tests/project/test_packaging.py: `python -m build --no-isolation` with the venv's setuptools,
                 # which needs 70.1+ to build wheels by itself (a new venv comes with an older one)
                 "build>=1.0", "setuptools>=70.1",
                 *DISTRIBUTED, *SERVE],
    },
    entry_points={"console_scripts": ["hashtagkit=hashtagkit.cli.main:main"]},
)
