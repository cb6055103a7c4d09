from pathlib import Path

from setuptools import find_namespace_packages, setup

setup(
    name="var-clip",
    version="0.1.0",
    description="VAR-CLIP text-to-image generation (next-scale prediction) for the Hugging Face ecosystem",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    package_dir={"": "src"},
    # the embedded default model's folders (no Python files) are namespace packages holding its weights and configs
    packages=find_namespace_packages("src", include=["var_clip", "var_clip.*"], exclude=["*.__pycache__"]),
    include_package_data=True,
    package_data={"var_clip.default_model": ["*.json", "*.md"], "var_clip.default_model.text_encoder": ["*"],
                  "var_clip.default_model.tokenizer": ["*"], "var_clip.default_model.transformer": ["*"],
                  "var_clip.default_model.vqvae": ["*"]},
    install_requires=[
        "torch>=2.3",
        # tested with diffusers 0.42.1 and transformers 5.23.0 (the Hub loading and custom-pipeline recipes
        # depend on diffusers internals: other minor versions are not supported)
        "diffusers>=0.42,<0.43",
        "transformers>=4.46",
        "safetensors>=0.4",
        "huggingface_hub>=0.25",
        "accelerate>=0.34",
        "Pillow>=10",
        "numpy>=1.24",
        "tqdm>=4.66",
        "jinja2>=3",
    ],
    extras_require={
        "test": ["pytest>=8", "datasets>=2.20", "matplotlib>=3.7", "torchmetrics>=1.4", "peft>=0.17"],
        "train": ["datasets>=2.20", "tensorboard>=2.15", "peft>=0.17"],
        # LoRA adapters (load_lora_weights, train-var --lora_rank); tested with peft 0.21.2
        "lora": ["peft>=0.17"],
        "analysis": ["matplotlib>=3.7"],
        # var-clip eval-fid (torchmetrics' FID; its own Inception also needs torch-fidelity) and dataset prompt files
        "eval": ["torchmetrics>=1.4", "datasets>=2.20"],
    },
    entry_points={"console_scripts": ["var-clip=var_clip.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
