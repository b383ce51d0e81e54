"""The study schema (pydantic v2): every section of a study YAML, its defaults and its rules.

Field rules (types, ranges, duplicates) sit on the models. Rules that need the task and
model registries -- unknown names, a method that cannot run a task, a CXR-only method asked
to predict samples without an image -- are in :mod:`raybench.study.checks`, which
:class:`StudyConfig` runs after the fields validate, so a bad study is refused before Ray
starts. ``docs/studies.md`` describes every field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from preprocessing.config import PreprocessConfig
from raybench.study.ssl_schema import SSLSection

SCHEMA_VERSION = 1
COHORTS = ("base", "matched")
SPLITS = ("train", "val", "test")
#: Subgroup columns of the prepared data (``raybench.data.GROUP_COLUMNS``; a test checks).
GROUP_ATTRIBUTES = ("race_group", "sex", "age_group", "insurance")
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")
#: Keys of a ``methods`` entry that are not hyperparameters.
METHOD_KEYS = ("hparams", "search_space", "cohorts", "cxr_missing_ratios")
SEARCH_TYPES = ("gp", "random", "fixed")

Cohort = Literal["base", "matched"]
Split = Literal["train", "val", "test"]
Attribute = Literal["race_group", "sex", "age_group", "insurance"]

# Numbers are strict: a boolean, a string or (for integers) a float is refused rather than
# coerced (YAML `true` would otherwise become 1), and each has a sane upper bound, so a typo
# like `epochs: 1e12` is refused at validation instead of running for ever.
#: Seeds and random states: what numpy's legacy RandomState accepts, [0, 2**32 - 1].
SEED_MAX = 2**32 - 1
MAX_CALLS = 10_000  # configurations per experiment
MAX_EPOCHS = 10_000
MAX_BATCHES = 10**9
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # accepts ints, refuses bools and strings
Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_MAX)]
Ratio = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]


def _fail(message: str) -> PydanticCustomError:
    """A validation error whose message is shown as is (no "Value error, " prefix)."""
    return PydanticCustomError("study", "{detail}", {"detail": message})


def _unique(values: tuple, what: str) -> tuple:
    if not values:
        raise _fail(f"needs at least one {what}")
    dupes = sorted({str(v) for v in values if values.count(v) > 1})
    if dupes:
        raise _fail(f"duplicate {what}: {', '.join(dupes)} (each may appear once)")
    return values


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- data
class SyntheticData(_Section):
    """Generate a synthetic MIMIC tree and preprocess it into the study's cache."""

    patients: Int = Field(400, ge=10, le=1_000_000)
    seed: Seed = 0
    image_size: Int = Field(96, ge=16, le=1024, description="generated JPEG size (px)")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)


class DataSection(_Section):
    """Where the prepared dataset comes from: ``path`` or ``synthetic`` (exactly one)."""

    path: str | None = None
    synthetic: SyntheticData | None = None
    imputation: Literal["medmod", "carebench"] = "medmod"

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if (self.path is None) == (self.synthetic is None):
            raise _fail("give exactly one of `path` (a prepared dataset directory) or "
                        "`synthetic` (generate and preprocess one)")
        if self.synthetic and self.imputation not in self.synthetic.preprocess.imputations:
            raise _fail(f"imputation {self.imputation!r} is not among "
                        f"synthetic.preprocess.imputations "
                        f"{list(self.synthetic.preprocess.imputations)}")
        return self


# ----------------------------------------------------------------------------- methods
class MethodConfig(_Section):
    """One method: fixed hyperparameters, an optional search space, optional restrictions."""

    hparams: dict[str, Any] = Field(default_factory=dict)
    search_space: dict[str, dict[str, list]] | None = None
    cohorts: tuple[Cohort, ...] | None = None
    cxr_missing_ratios: tuple[Ratio, ...] | None = None

    @field_validator("cohorts", "cxr_missing_ratios")
    @classmethod
    def _distinct(cls, value: tuple | None, info) -> tuple | None:
        return None if value is None else _unique(value, info.field_name.rstrip("s"))


def _method_entry(spec: Any) -> Any:
    """YAML form (hyperparameters inline, beside the reserved keys) -> MethodConfig fields."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        return spec  # pydantic reports the type error
    entry = {k: spec[k] for k in METHOD_KEYS if k in spec and k != "hparams"}
    inline = {k: v for k, v in spec.items() if k not in METHOD_KEYS}
    nested = spec.get("hparams") or {}
    entry["hparams"] = {**nested, **inline} if isinstance(nested, Mapping) else nested
    return entry


# ----------------------------------------------------------------------------- search
class GPSearch(_Section):
    """Bayesian optimisation (scikit-optimize GP); CareBench's defaults, selected on val."""

    type: Literal["gp"] = "gp"
    n_calls: Int = Field(20, gt=0, le=MAX_CALLS,
                         description="configurations tried (each run per seed)")
    n_initial_points: Int = Field(5, gt=0, le=MAX_CALLS,
                                  description="random configurations first")
    acq_func: Literal["gp_hedge", "EI", "PI", "LCB"] = "gp_hedge"
    random_state: Seed = 0

    @model_validator(mode="after")
    def _initial_within_calls(self) -> GPSearch:
        if self.n_initial_points > self.n_calls:
            raise _fail(f"n_initial_points ({self.n_initial_points}) must be <= n_calls "
                        f"({self.n_calls})")
        return self


class RandomSearch(_Section):
    """Random search over the same space."""

    type: Literal["random"]
    n_calls: Int = Field(20, gt=0, le=MAX_CALLS)
    random_state: Seed = 0


class FixedSearch(_Section):
    """No search: the fixed hyperparameters only (still one run per seed)."""

    type: Literal["fixed"]


def _search_tag(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("type", "gp")
    return getattr(value, "type", None)


SearchSection = Annotated[
    Union[  # noqa: UP007  (a tagged union needs the Union form)
        Annotated[GPSearch, Tag("gp")],
        Annotated[RandomSearch, Tag("random")],
        Annotated[FixedSearch, Tag("fixed")],
    ],
    Discriminator(_search_tag, custom_error_type="search_type",
                  custom_error_message="type must be one of gp, random, fixed"),
]


# ----------------------------------------------------------------------------- the rest
class TrainingSection(_Section):
    """Trainer and loader settings; names and defaults are TrainConfig's / LoaderConfig's."""

    epochs: Int = Field(50, ge=1, le=MAX_EPOCHS)
    patience: Int = Field(10, ge=1, le=MAX_EPOCHS)
    pretrain_epochs: Int | None = Field(None, ge=1, le=MAX_EPOCHS,
                                        description="per stage; default epochs")
    batch_size: Int = Field(16, ge=1, le=65_536)
    max_train_batches: Int | None = Field(None, ge=1, le=MAX_BATCHES,
                                          description="per epoch, every task")
    hourly_max_train_batches: Int | None = Field(None, ge=1, le=MAX_BATCHES,
                                                 description="hourly tasks")
    max_val_samples: Int | None = Field(None, ge=1, le=MAX_BATCHES)
    hourly_max_val_samples: Int | None = Field(None, ge=1, le=MAX_BATCHES)
    crop: Int | None = Field(None, ge=8, le=4096,
                             description="image crop; default 7/8 of the size")
    augment: bool = True
    optimizer: Literal["adam", "adamw"] = "adam"
    amp: bool = True


class ResourcesSection(_Section):
    """What one trial reserves, and how failures are retried."""

    cpu: Float = Field(1.0, gt=0, le=1024)
    gpu: Float = Field(0.0, ge=0, le=64)
    max_concurrent_trials: Int | None = Field(None, ge=1, le=100_000)
    max_failures: Int = Field(1, ge=0, le=1000)

    @field_validator("gpu")
    @classmethod
    def _whole_or_fraction(cls, gpu: float) -> float:
        if gpu > 1 and not float(gpu).is_integer():
            raise _fail(f"got {gpu}: a trial takes a fraction of one GPU (0 to 1) or a whole "
                        "number of GPUs (2, 4...); a fraction above 1 cannot be placed")
        return gpu


class RobustnessSection(_Section):
    """Missing-CXR conditions: the ratio of stays whose image is dropped, and where."""

    cxr_missing_ratios: tuple[Ratio, ...] = (0.0,)
    missing_splits: tuple[Split, ...] = SPLITS

    @field_validator("cxr_missing_ratios", "missing_splits")
    @classmethod
    def _distinct(cls, value: tuple, info) -> tuple:
        return _unique(value, info.field_name.rstrip("s"))


class FairnessSection(_Section):
    """Subgroup analysis of the test predictions."""

    enabled: bool = True
    attributes: tuple[Attribute, ...] = GROUP_ATTRIBUTES
    min_group_size: Int = Field(10, ge=1, le=1_000_000,
                                description="smaller groups are not reported")

    @field_validator("attributes")
    @classmethod
    def _distinct(cls, value: tuple) -> tuple:
        return _unique(value, "attribute")


class ReportSection(_Section):
    """Where the markdown report goes (relative paths: inside the study directory)."""

    path: str = "report/"


# ----------------------------------------------------------------------------- study
class StudyConfig(_Section):
    """A whole study: data, the experiment grid, search, training, resources, analyses."""

    schema_version: Int
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    storage: str = Field("", description="study directory: local path or URI")
    data: DataSection
    tasks: tuple[str, ...]
    cohorts: tuple[Cohort, ...] = ("base",)
    methods: dict[str, MethodConfig]
    seeds: tuple[Seed, ...] = Field((0, 1, 2), max_length=1000)
    search: SearchSection = Field(default_factory=GPSearch)
    training: TrainingSection = Field(default_factory=TrainingSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    robustness: RobustnessSection = Field(default_factory=RobustnessSection)
    fairness: FairnessSection = Field(default_factory=FairnessSection)
    report: ReportSection = Field(default_factory=ReportSection)
    ssl: SSLSection | None = Field(None, description="self-supervised pretraining (docs/ssl.md)")

    @model_validator(mode="before")
    @classmethod
    def _default_storage(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and not raw.get("storage") and raw.get("name"):
            raw = {**raw, "storage": f"results/{raw['name']}"}
        return raw

    @field_validator("schema_version")
    @classmethod
    def _supported_version(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise _fail(f"unsupported schema_version {version}: this raybench reads "
                        f"schema_version {SCHEMA_VERSION}")
        return version

    @field_validator("storage")
    @classmethod
    def _storage_uri(cls, storage: str) -> str:
        scheme, sep, _ = storage.partition("://")
        if not storage:
            raise _fail("must be a local path or a URI (s3://bucket/dir, gs://bucket/dir)")
        if sep and scheme not in STORAGE_SCHEMES:
            raise _fail(f"unknown URI scheme {scheme!r}; expected a local path or one of "
                        f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}")
        return storage

    @field_validator("tasks", "cohorts", "seeds")
    @classmethod
    def _distinct(cls, value: tuple, info) -> tuple:
        return _unique(value, info.field_name.rstrip("s"))

    @field_validator("methods", mode="before")
    @classmethod
    def _method_mapping(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            names = [v for v in value if not isinstance(v, str)]
            if names:
                raise _fail(f"list entries must be method names, got {names[0]!r}")
            if value:
                _unique(tuple(value), "method")
            return {name: {} for name in value}
        if isinstance(value, Mapping):
            return {name: _method_entry(spec) for name, spec in value.items()}
        return value

    @model_validator(mode="after")
    def _some_method(self) -> StudyConfig:
        if not self.methods and self.ssl is None:
            raise PydanticCustomError(
                "study", "{detail}", {"detail": "methods: needs at least one method (or an "
                                                "`ssl` section)"})
        return self

    @model_validator(mode="after")
    def _cross_check(self) -> StudyConfig:
        from raybench.study.checks import cross_check

        problems = cross_check(self)
        if problems:
            raise _fail("; ".join(problems))
        return self
