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
    # the custom-pipeline files and the model-card templates live at the top of the repository and ship inside the
    # package (var_clip.utils.package_data finds them in either place)
    package_dir={"": "src", "var_clip.custom_pipelines": "pipelines", "var_clip.model_cards": "model_cards"},
    # the embedded default model's folders (no Python files) are namespace packages holding its weights and configs
    packages=[*find_namespace_packages("src", include=["var_clip", "var_clip.*"], exclude=["*.__pycache__"]),
              "var_clip.custom_pipelines", "var_clip.model_cards"],
    include_package_data=True,
    # data that ships in the wheel: the embedded default model (its folders hold no Python files and are namespace
    # packages), the model-card templates of the conversion and the diffusers custom-pipeline files
    package_data={"var_clip.default_model": ["*.json", "*.md"], "var_clip.default_model.text_encoder": ["*"],
                  "var_clip.default_model.tokenizer": ["*"], "var_clip.default_model.transformer": ["*"],
                  "var_clip.default_model.vqvae": ["*"], "var_clip.model_cards": ["*.md"],
                  "var_clip.custom_pipelines": ["*.py", "*.md"]},
    # floors: what the code needs (transformers 5: CLIPTokenizer(vocab=dict, merges=list), .backend_tokenizer) and
    # what diffusers 0.42 itself requires (huggingface_hub >= 1.32, safetensors >= 0.8). Tested set: see the README.
    install_requires=[
        "torch>=2.3",
        # the Hub loading and custom-pipeline recipes depend on diffusers internals: other minor versions are not
        # supported
        "diffusers>=0.42,<0.43",
        "transformers>=5,<6",
        "safetensors>=0.8",
        "huggingface_hub>=1.32",
        "accelerate>=0.34",
        "Pillow>=10",
        "numpy>=1.24",
        "scipy>=1.10",  # the shapes world's connected components (scipy.ndimage.label)
        "tqdm>=4.66",
    ],
    extras_require={
        "test": ["pytest>=8", "datasets>=2.20", "matplotlib>=3.7", "torchmetrics>=1.4", "jinja2>=3", "peft>=0.17"],
        "train": ["datasets>=2.20", "tensorboard>=2.15", "peft>=0.17"],
        # LoRA adapters (load_lora_weights, train-var --lora_rank); tested with peft 0.21.2
        "lora": ["peft>=0.17"],
        "analysis": ["matplotlib>=3.7"],
        # var-clip eval-fid (torchmetrics' FID; its own Inception also needs torch-fidelity) and dataset prompt files
        "eval": ["torchmetrics>=1.4", "datasets>=2.20"],
        # the model cards the conversion writes (torch itself already requires jinja2)
        "convert": ["jinja2>=3"],
        # var-clip demo and the Space's app.py (Gradio 6's launch options; tested with gradio 6.31.0)
        "demo": ["gradio>=6,<7"],
        # the transformer quantized through diffusers' quantization_config (torchao >= 0.15 is what diffusers asks;
        # safetensors saving needs 0.16); tested with torchao 0.18.0 and optimum-quanto 0.2.7
        "quantization": ["torchao>=0.16", "optimum-quanto>=0.2.6"],
    },
    entry_points={"console_scripts": ["var-clip=var_clip.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
