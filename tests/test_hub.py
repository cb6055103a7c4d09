"""Hub I/O up to the network boundary: publishing a converted folder, downloading a pipeline by repo id, and
loading it from a diffusers app through `pipelines/`."""

from __future__ import annotations

import fnmatch
import importlib.util
import shutil
import types
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import HfApi

import var_clip.hub as hub
from var_clip import VARCLIPPipeline, VARPipeline
from var_clip.hub import CUSTOM_PIPELINES_DIR
from var_clip.original_format import transformer_to_original, vqvae_to_original

from .conftest import REPO, make_tiny_text_encoder, make_tiny_tokenizer, make_tiny_transformer, make_tiny_vqvae

REPO_ID = "someone/tiny-var-clip"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "conversion_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())


def _generate(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny text pipeline saved in fp32 and as an fp16 variant in one folder, as a Hub repository would hold."""
    folder = tmp_path_factory.mktemp("hub") / "repo"
    tokenizer = make_tiny_tokenizer()
    pipe = VARCLIPPipeline(tokenizer=tokenizer, text_encoder=make_tiny_text_encoder(tokenizer),
                           transformer=make_tiny_transformer(), vqvae=make_tiny_vqvae())
    pipe.save_pretrained(folder)
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    (folder / "README.md").write_text("---\nlibrary_name: var-clip\n---\n# tiny\n")
    return folder


@pytest.fixture
def fake_hub(tiny_folder, tmp_path, monkeypatch):
    """`model_info` lists the repository; `snapshot_download` copies only what `allow_patterns` selects."""
    repo = tmp_path / "remote"
    shutil.copytree(tiny_folder, repo)
    (repo / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02pickled")  # must never be fetched
    (repo / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    calls = []

    def model_info(self, repo_id, revision=None, **kwargs):
        calls.append(("model_info", repo_id, revision))
        return types.SimpleNamespace(sha="c0ffee" * 6 + "abcd", siblings=[types.SimpleNamespace(rfilename=f)
                                                                          for f in _files(repo)])

    def snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None, **kwargs):
        calls.append(("snapshot_download", repo_id, revision, sorted(allow_patterns or [])))
        target = tmp_path / "cache" / repo_id.replace("/", "--") / str(revision)
        for f in _files(repo):
            if allow_patterns is None or any(fnmatch.fnmatch(f, p) for p in allow_patterns):
                (target / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(repo / f, target / f)
        return str(target)

    monkeypatch.setattr(HfApi, "model_info", model_info)
    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    return types.SimpleNamespace(repo=repo, calls=calls)


# ----------------------------------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------------------------------


def test_select_files_per_variant():
    files = ["model_index.json", "README.md", ".gitattributes", "tokenizer/vocab.json", "tokenizer/merges.txt",
             "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
             "transformer/diffusion_pytorch_model.fp16.safetensors", "transformer/diffusion_pytorch_model.bin",
             "vqvae/config.json", "vqvae/diffusion_pytorch_model-00001-of-00002.safetensors",
             "vqvae/diffusion_pytorch_model-00002-of-00002.safetensors",
             "vqvae/diffusion_pytorch_model.safetensors.index.json", "text_encoder/config.json",
             "text_encoder/model.safetensors", "text_encoder/flax_model.msgpack"]
    fp32 = hub.select_files(files)
    assert "transformer/diffusion_pytorch_model.safetensors" in fp32
    assert not any(f.endswith((".bin", ".msgpack", ".fp16.safetensors")) or f.startswith(".git") for f in fp32)
    assert {"vqvae/diffusion_pytorch_model-00001-of-00002.safetensors", "tokenizer/merges.txt"} <= set(fp32)
    fp16 = hub.select_files(files, variant="fp16")
    # the variant where a folder has it, the default weights where it has not (as diffusers does)
    assert "transformer/diffusion_pytorch_model.fp16.safetensors" in fp16
    assert "transformer/diffusion_pytorch_model.safetensors" not in fp16 and "text_encoder/model.safetensors" in fp16
    with pytest.raises(ValueError, match=r"`variant`='bf16' is not in this repository; available variants: \['fp16'\]"):
        hub.select_files(files, variant="bf16")
    with pytest.raises(ValueError, match="only pickled weights"):
        hub.select_files(["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin"])


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_snapshot_downloads_one_variant_and_loads(variant, fake_hub):
    folder = hub.snapshot(REPO_ID, variant=variant)
    files = _files(Path(folder))
    weights = [f for f in files if f.endswith(".safetensors")]
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    assert len(weights) == 3 and all(f.endswith(suffix) for f in weights)
    assert variant or not any(".fp16." in f for f in weights)
    assert "model_index.json" in files and "tokenizer/tokenizer_config.json" in files
    assert not any(f.endswith(".bin") or f.startswith(".git") for f in files)
    # every file from the one commit the revision resolved to
    assert fake_hub.calls[0] == ("model_info", REPO_ID, None) and fake_hub.calls[1][2] == "c0ffee" * 6 + "abcd"
    dtype = torch.float16 if variant else torch.float32
    pipe = VARCLIPPipeline.from_pretrained(folder, variant=variant, dtype=dtype)
    assert pipe.text_encoder.dtype == dtype
    assert _generate(pipe, prompt="a red circle", guidance_scale=2.0).shape == (1, 3, 16, 16)


def test_snapshot_passes_local_folders_through_and_checks_ids(tiny_folder):
    assert hub.snapshot(tiny_folder) == str(tiny_folder)
    with pytest.raises(ValueError, match="repo_id"):
        hub.snapshot("not/a/valid/id")


def _fake_diffusers_hub(monkeypatch, repo: Path, cache: Path):
    """diffusers' own download path (model_info, hf_hub_download, snapshot_download), served from a folder."""
    import diffusers.pipelines.pipeline_utils as pipeline_utils

    def model_info(repo_id, **kwargs):
        return types.SimpleNamespace(sha="0" * 40, siblings=[types.SimpleNamespace(rfilename=f) for f in _files(repo)])

    def hf_hub_download(repo_id, filename, **kwargs):
        (cache / filename).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / filename, cache / filename)
        return str(cache / filename)

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        for f in _files(repo):
            if allow_patterns is None or any(fnmatch.fnmatch(f, p) for p in allow_patterns):
                (cache / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(repo / f, cache / f)
        return str(cache)

    monkeypatch.setattr(pipeline_utils, "model_info", model_info)
    monkeypatch.setattr(pipeline_utils, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(pipeline_utils, "snapshot_download", snapshot_download)
    monkeypatch.setattr(pipeline_utils, "_resolve_revision", lambda name, **kwargs: kwargs.get("revision"))


def test_from_pretrained_with_a_repo_id(fake_hub, tmp_path, monkeypatch):
    """diffusers 0.42.1's own download refuses components named by a module it does not know (var_clip's);
    routing the pipeline's download through `hub.diffusers_download` makes `from_pretrained("owner/name")` work."""
    _fake_diffusers_hub(monkeypatch, fake_hub.repo, tmp_path / "diffusers-cache")
    routes_downloads = VARCLIPPipeline.download.__func__ is not DiffusionPipeline.download.__func__
    if routes_downloads:
        assert isinstance(VARCLIPPipeline.from_pretrained(REPO_ID), VARCLIPPipeline)
    else:
        with pytest.raises(ValueError, match=r"transformer/var_clip\.models\.var_transformer\.py as defined in "
                                             r"`model_index.json` does not exist"):
            VARCLIPPipeline.from_pretrained(REPO_ID)

    class RoutedPipeline(VARCLIPPipeline):
        @classmethod
        def download(cls, pretrained_model_name, **kwargs):
            return hub.diffusers_download(pretrained_model_name, **kwargs)

    pipe = RoutedPipeline.from_pretrained(REPO_ID, variant="fp16", dtype=torch.float16)
    assert pipe.transformer.config.depth == 2 and pipe.text_encoder.dtype == torch.float16
    assert not any(".fp16." not in f for f in fake_hub.calls[-1][3] if f.endswith(".safetensors"))


# ----------------------------------------------------------------------------------------------------------------------
# Publishing
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_upload(monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
        # what the real upload_folder sends: the folder's files that `allow_patterns` selects
        files = [f for f in _files(Path(folder_path))
                 if allow_patterns is None or any(fnmatch.fnmatch(f, p) for p in allow_patterns)]
        # what would be uploaded loads and generates
        pipe = VARCLIPPipeline.from_pretrained(folder_path)
        calls.append(("upload_folder", repo_id, folder_path, files, kwargs, _generate(pipe, prompt="a red circle")))
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/1234")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("original")
    torch.save({"trainer": {"var_wo_ddp": transformer_to_original(make_tiny_transformer())}}, folder / "var.pth")
    torch.save(vqvae_to_original(make_tiny_vqvae()), folder / "vae.pth")
    tokenizer = make_tiny_tokenizer()
    make_tiny_text_encoder(tokenizer).save_pretrained(folder / "clip")
    tokenizer.save_pretrained(folder / "clip")
    return folder


def test_convert_and_push_uploads_the_complete_folder(tiny_checkpoints, fake_upload, tmp_path, capsys, monkeypatch):
    script = _script("convert_var_clip_to_diffusers")
    out = tmp_path / "out"
    rc = script.main(["--var_checkpoint", str(tiny_checkpoints / "var.pth"), "--vae_checkpoint",
                      str(tiny_checkpoints / "vae.pth"), "--output_dir", str(out), "--text_encoder",
                      str(tiny_checkpoints / "clip"), "--push_to_hub", REPO_ID, "--private"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "uploaded to https://huggingface.co/someone/tiny-var-clip" in stdout
    (create, name, kwargs), upload = fake_upload[0], fake_upload[1]
    assert (create, name) == ("create_repo", REPO_ID) and kwargs["private"] is True and kwargs["exist_ok"] is True
    assert upload[:3] == ("upload_folder", REPO_ID, str(out))
    assert upload[3] == ["README.md", "model_index.json", "text_encoder/config.json", "text_encoder/model.safetensors",
                         "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "transformer/config.json",
                         "transformer/diffusion_pytorch_model.safetensors", "vqvae/config.json",
                         "vqvae/diffusion_pytorch_model.safetensors"]
    assert upload[5].shape == (1, 3, 16, 16)

    # the card names the repository, and its snippet runs once the id points at the folder
    card = (out / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert f'snapshot("{REPO_ID}")' in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace(REPO_ID, str(out)), "README.md", "exec"), {"__name__": "__card__"})
    assert (tmp_path / "var_clip_sample.png").exists()


def test_failed_upload_keeps_the_converted_folder(tiny_checkpoints, tmp_path, capsys, monkeypatch):
    def create_repo(self, repo_id, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    script = _script("convert_var_clip_to_diffusers")
    out = tmp_path / "out"
    rc = script.main(["--var_checkpoint", str(tiny_checkpoints / "var.pth"), "--vae_checkpoint",
                      str(tiny_checkpoints / "vae.pth"), "--output_dir", str(out), "--text_encoder", "none",
                      "--push_to_hub", REPO_ID, "--skip_check"])
    _, err = capsys.readouterr()
    assert rc == 1 and "upload to someone/tiny-var-clip failed (network is unreachable)" in err
    assert "Traceback" not in err and (out / "model_index.json").exists()


def test_push_refuses_incomplete_or_unsafe_folders(tiny_folder, tmp_path, fake_upload):
    folder = tmp_path / "pipe"
    shutil.copytree(tiny_folder, folder)
    (folder / "README.md").unlink()
    (folder / "vqvae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vqvae" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    (folder / "transformer" / "extra.pth").write_bytes(b"\x80\x02")
    with pytest.raises(ValueError) as info:
        hub.push_pipeline_to_hub(folder, REPO_ID)
    message = str(info.value)
    assert "no README.md" in message and "'vqvae' has no safetensors weights" in message and "extra.pth" in message
    with pytest.raises(ValueError, match="repo_id"):
        hub.push_pipeline_to_hub(tiny_folder, "no-owner")
    assert fake_upload == []  # nothing was asked of the Hub


def test_push_a_single_model_folder(tmp_path, fake_upload, monkeypatch):
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: fake_upload.append(kwargs) or "ok")
    make_tiny_vqvae().save_pretrained(tmp_path / "vqvae")
    (tmp_path / "vqvae" / "README.md").write_text("# vqvae\n")
    assert hub.push_pipeline_to_hub(tmp_path / "vqvae", REPO_ID, commit_message="vq") == "ok"
    assert fake_upload[-1]["repo_id"] == REPO_ID and fake_upload[-1]["commit_message"] == "vq"


# ----------------------------------------------------------------------------------------------------------------------
# Diffusers apps: DiffusionPipeline.from_pretrained(folder, custom_pipeline=pipelines/..., trust_remote_code=True)
# ----------------------------------------------------------------------------------------------------------------------


def test_diffusers_app_loads_through_custom_pipeline_files(tiny_folder, tmp_path):
    text_file = CUSTOM_PIPELINES_DIR / "pipeline_var_clip.py"  # shipped in the package
    pipe = DiffusionPipeline.from_pretrained(tiny_folder, custom_pipeline=str(text_file), trust_remote_code=True)
    assert type(pipe) is VARCLIPPipeline
    direct = VARCLIPPipeline.from_pretrained(tiny_folder)
    kwargs = dict(prompt="a blue square", guidance_scale=3.0, top_k=5)
    torch.testing.assert_close(_generate(pipe, **kwargs), _generate(direct, **kwargs), atol=0, rtol=0)

    # the class-conditional file, in the same process (distinct module names: no clash in diffusers' module cache)
    class_folder = tmp_path / "var"
    VARPipeline(transformer=make_tiny_transformer("class"), vqvae=make_tiny_vqvae()).save_pretrained(class_folder)
    class_file = CUSTOM_PIPELINES_DIR / "pipeline_var.py"
    class_pipe = DiffusionPipeline.from_pretrained(class_folder, custom_pipeline=str(class_file),
                                                   trust_remote_code=True)
    assert type(class_pipe) is VARPipeline and _generate(class_pipe, class_labels=[1, 2]).shape == (2, 3, 16, 16)

    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tiny_folder, custom_pipeline=str(text_file))
