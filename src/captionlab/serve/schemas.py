"""The JSON the API answers with, as pydantic models (they document /openapi.json and /docs)."""

from __future__ import annotations

from pydantic import BaseModel, Field

_PNG = "a PNG image as a data: URL (data:image/png;base64,...)"


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="what was wrong, naming the field or the limit")


class ImageNetClass(BaseModel):
    index: int = Field(description="ImageNet-1k class index, 0..999", examples=[285])
    name: str = Field(examples=["Egyptian cat"])
    probability: float = Field(description="softmax probability", examples=[0.39])


class ClassifyOut(BaseModel):
    classes: list[ImageNetClass] = Field(description="the top classes, most probable first")
    seconds: float = Field(description="time the network took")


class AttentionMaps(BaseModel):
    """Where the model looked for each word: word ``k`` of ``words`` has ``maps[k]`` and
    ``images[k]``."""

    grid: list[int] = Field(description="[s, s]: the attended grid of cells", examples=[[5, 5]])
    maps: list[list[float]] = Field(
        description="per word, the s*s cell weights (row-major, top-left first; they sum to 1)"
    )
    images: list[str] = Field(
        description="per word, the model's S x S crop seen through that word's attention "
        "(bright where it looked, dimmed elsewhere); " + _PNG
    )


class CaptionOut(BaseModel):
    decoding: str = Field(description="'greedy' or 'beam'")
    beam_size: int
    text: str = Field(examples=["a small red circle left of a large blue square"])
    words: list[str]
    attention: AttentionMaps | None = Field(
        None, description="per-word attention maps, for models with attention; null otherwise"
    )


class ModelCaptions(BaseModel):
    model: str = Field(description="the model's name, as listed by GET /api/models")
    image_size: int = Field(description="side of the centre crop the model's features came from")
    captions: list[CaptionOut] = Field(description="greedy first, then beam search if asked")


class CaptionResponse(BaseModel):
    results: list[ModelCaptions]
    seconds: float


class ModelInfo(BaseModel):
    name: str
    cell: str = Field(description="rnn, lstm, gru, attention or transformer")
    vocab_size: int
    hidden_dim: int = Field(description="the recurrent state's size (the transformer's width)")
    image_size: int
    attention: bool = Field(description="whether captions come with per-word attention maps")
    grid: list[int] | None = Field(description="[s, s] of the attended grid; null without one")
    explain: bool = Field(description="whether POST /api/explain can explain its captions")
    explain_methods: list[str] = Field(
        description="the methods POST /api/explain explains it by: vanilla, smoothgrad and ig "
        "for every model it can explain, and gradcam and guided-gradcam for a model over a "
        "grid of cells (attention, grid transformer); empty when it cannot be explained",
        examples=[["vanilla", "smoothgrad", "ig", "gradcam", "guided-gradcam"]],
    )
    hold_attention: bool = Field(
        description="whether POST /api/explain can hold its attention weights constant "
        "(hold_attention=true: the attention captioner)"
    )


class ExplainedWord(BaseModel):
    word: str
    position: int = Field(description="the word's index in the caption, 0 = the first word")
    prob: float = Field(description="its probability given the image and the words before it")
    peak: list[int] | None = Field(
        description="[x, y]: the saliency map's maximum, in pixels of the S x S crop (gradcam: "
        "the centre of the cell most relevant to the word); null when the map is the same "
        "everywhere (a word no cell raises)"
    )
    saliency: str = Field(
        description="the map of the word's log-probability by the method, over the greyed crop "
        "(gradcam: the cells' relevance, upsampled); " + _PNG
    )
    attention: str | None = Field(
        description="the crop seen through the word's attention (null without attention); " + _PNG
    )
    attention_peak: list[int] | None = Field(
        description="[x, y]: the centre of the cell the word's attention weighs most, in the "
        "crop's pixels, or null"
    )


class ExplainOut(BaseModel):
    model: str
    method: str = Field(description="vanilla, smoothgrad, ig, layercam, gradcam or guided-gradcam")
    hold_attention: bool = Field(
        description="whether every gradient held the attention weights constant"
    )
    beam: int = Field(description="the caption's beam size (1: greedy)")
    samples: int | None = Field(
        description="SmoothGrad's noisy copies (smoothgrad, guided-gradcam; null otherwise)"
    )
    steps: int | None = Field(description="Integrated Gradients' path points (null otherwise)")
    image_size: int = Field(description="S: the side of the centre crop the maps are on")
    image: str = Field(description="the S x S crop the model saw; " + _PNG)
    caption: str = Field(examples=["a large yellow circle on a plain background"])
    grid: list[int] | None = Field(description="[s, s] of the attended grid; null without one")
    words: list[ExplainedWord] = Field(description="one per word of the caption, in order")
    seconds: float


class ModelsOut(BaseModel):
    models: list[ModelInfo]
    beam_max: int


class QueueInfo(BaseModel):
    pending: int = Field(description="requests waiting for or using the network")
    completed: int
    max: int


class HealthOut(BaseModel):
    status: str = Field(examples=["ok"])
    version: str
    device: str
    models: list[str]
    skipped: list[str] = Field(description="checkpoints found at start-up that did not load")
    queue: QueueInfo
    max_upload_bytes: int
    max_pixels: int


class ClassEntry(BaseModel):
    index: int
    name: str
    synonyms: list[str]


class ClassesOut(BaseModel):
    classes: list[ClassEntry]


class ExamplePhoto(BaseModel):
    name: str
    url: str = Field(description="GET it for the photo as PNG")


class ExamplesOut(BaseModel):
    photos: list[ExamplePhoto]
    shapes_url: str = Field(description="GET it for a random shapes scene (JSON)")


class ShapesOut(BaseModel):
    seed: int
    image: str = Field(description=_PNG)
    references: list[str] = Field(description="five true captions of the scene")
    objects: list[dict] = Field(description="size, colour and shape of each object")
    relations: list[str] = Field(description="the spatial relations that hold")


class SaliencyOut(BaseModel):
    method: str
    target: ImageNetClass = Field(description="the class explained, with its probability")
    overlay: str = Field(description="the heat map over the greyed photo; " + _PNG)
    map: str = Field(description="the heat map alone, white = salient; " + _PNG)
    seconds: float


class FoolImages(BaseModel):
    original: str = Field(description="the 224x224 centre crop the network saw; " + _PNG)
    fooled: str = Field(description=_PNG)
    difference: str = Field(description="fooled - original, magnified around grey; " + _PNG)


class FoolOut(BaseModel):
    target: ImageNetClass = Field(description="the class aimed at, its probability after")
    attack: str = Field(description="'pgd' (bounded by epsilon) or 'cs231n' (unbounded)")
    epsilon: float | None
    success: bool = Field(description="the fooled image, rounded to pixels, is the target class")
    iterations: int
    max_change: float = Field(description="largest change of a pixel channel, in grey levels")
    magnify: float = Field(description="how much the difference image is magnified")
    original_class: ImageNetClass
    fooled_class: ImageNetClass = Field(description="the new top class")
    images: FoolImages
    seconds: float


class DreamResult(BaseModel):
    target: ImageNetClass
    iterations: int
    image: str = Field(description=_PNG)


class JobOut(BaseModel):
    id: str
    kind: str
    state: str = Field(description="queued, running, done or error")
    step: int
    total: int
    preview: str | None = Field(description="the latest image; " + _PNG)
    result: DreamResult | None
    error: str | None
