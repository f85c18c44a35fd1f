"""Built-in text encoders: the medical language models of the thesis and SD v1's own CLIP."""

from __future__ import annotations

from dva.core.hookspecs import hookimpl
from dva.core.specs import EncoderSpec, Option

IMPLEMENTATION = "dva.components.text_encoders:TextEncoder"

ENCODER_OPTIONS = {
    "path": Option(str, None, "local folder (or hub id) to load the encoder from instead of its default"),
    "max_length": Option(int, 77, "tokenizer length (77 as SD v1's CLIP; BERT allows up to 512)", 1, 512),
}

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}
TINY_CLIP = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}

BUILTIN_ENCODERS = (
    EncoderSpec(
        name="radbert",
        implementation=IMPLEMENTATION,
        description="RadBERT, a BERT pretrained on radiology reports (the thesis' encoder)",
        options=ENCODER_OPTIONS,
        family="bert",
        default_source="StanfordAIMI/RadBERT",
        hidden_size=768,
        tiny_config=TINY_BERT,
    ),
    EncoderSpec(
        name="biobert",
        implementation=IMPLEMENTATION,
        description="BioBERT v1.2, a BERT pretrained on PubMed abstracts",
        options=ENCODER_OPTIONS,
        family="bert",
        default_source="dmis-lab/biobert-base-cased-v1.2",
        hidden_size=768,
        tiny_config=TINY_BERT,
    ),
    EncoderSpec(
        name="pubmedclip",
        implementation=IMPLEMENTATION,
        description="PubMedCLIP text tower (CLIP ViT-B/32 fine-tuned on PubMed figures); 512 wide",
        options=ENCODER_OPTIONS,
        family="clip",
        default_source="flaviagiammarino/pubmed-clip-vit-base-patch32",
        hidden_size=512,
        tiny_config=TINY_CLIP,
    ),
    EncoderSpec(
        name="clip",
        implementation=IMPLEMENTATION,
        description="OpenAI CLIP ViT-L/14 text encoder, Stable Diffusion v1's own",
        options=ENCODER_OPTIONS,
        family="clip",
        default_source="openai/clip-vit-large-patch14",
        hidden_size=768,
        tiny_config=TINY_CLIP,
    ),
)


@hookimpl
def register_encoders(register):
    for spec in BUILTIN_ENCODERS:
        register(spec)
