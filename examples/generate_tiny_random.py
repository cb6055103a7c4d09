"""Generate an image with a tiny, randomly initialised VAR-CLIP pipeline (no download, a few seconds on a CPU).

The pictures are noise-like (nothing is trained); the script shows the whole pipeline end to end:
tokenizer → CLIP text encoder → VAR transformer (next-scale sampling) → multi-scale VQ-VAE decoder → PNG.
"""

import argparse

import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from var_clip import MultiScaleVQModel, VARCLIPPipeline, VARTransformer2DModel


def byte_level_clip_tokenizer() -> CLIPTokenizer:
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = 256 + extra, extra + 1
    chars = [chr(table[b]) for b in range(256)]
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prompt", nargs="?", default="a red fox")
    parser.add_argument("--output", "-o", default="tiny_random.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    tokenizer = byte_level_clip_tokenizer()
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        projection_dim=64, bos_token_id=512, eos_token_id=513, pad_token_id=513))
    transformer = VARTransformer2DModel(vocab_size=256, latent_channels=16, patch_nums=(1, 2, 3, 4, 6, 8),
                                        depth=2, embed_dim=64, num_heads=2, text_embed_dim=64)
    vqvae = MultiScaleVQModel(vocab_size=256, latent_channels=16, ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1,
                              patch_nums=(1, 2, 3, 4, 6, 8))
    pipe = VARCLIPPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vqvae=vqvae)
    image = pipe(args.prompt, generator=torch.Generator().manual_seed(args.seed)).images[0]
    image.save(args.output)
    print(f"wrote {args.output} ({image.width}×{image.height})")


if __name__ == "__main__":
    main()
