"""The dream loop's evaluator: one section per kind, and `EvaluatorConfig`, their pydantic union tagged by
`kind` (default `rules`). Each kind holds only its own keys, so a key of another kind is an error that names
the kind it belongs to."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag, TypeAdapter, model_validator

from toolkit.config.section import Section, reject_other_members

Threshold = Annotated[float, Field(ge=0, le=1)]  # classifier probability / normalized score needed to pass


class RulesEvaluatorConfig(Section):
    """Phrases (case-insensitive) and regular expressions that must / must not appear."""

    kind: Literal["rules"] = "rules"
    must_include: list[str] = []
    must_match: list[str] = []
    must_not_include: list[str] = []
    must_not_match: list[str] = []

    @model_validator(mode="after")
    def _some_rule(self):
        if not (self.must_include or self.must_match or self.must_not_include or self.must_not_match):
            raise ValueError("a rules evaluator needs at least one of must_include, must_match, must_not_include, "
                             "must_not_match")
        return self


class _NeedsKey(Section):
    """A kind that cannot work without one key (`needs`): an error saying so, whatever else is set."""

    needs: ClassVar[str]

    @model_validator(mode="after")
    def _needs(self):
        if not getattr(self, self.needs):
            raise ValueError(f"evaluator kind '{self.kind}' needs `{self.needs}`")
        return self


class ClassifierEvaluatorConfig(_NeedsKey):
    """A scikit-learn pipeline trained on labeled JSONL rows {"text" | "scenario"+"response", "label": 0/1}."""

    needs = "examples"

    kind: Literal["classifier"] = "classifier"
    examples: str | None = None
    threshold: Threshold = 0.5


class JudgeEvaluatorConfig(_NeedsKey):
    """Another Hugging Face model scores with a prompt template; the first number matched is the score."""

    needs = "model"

    kind: Literal["judge"] = "judge"
    model: str | None = None  # a model dir, hub id, adapter dir or run dir
    prompt: str = ("Rate how well the reply follows the user's directive, from 0 to 10.\n"
                   "User: {scenario}\nReply: {response}\nScore:")
    score_pattern: str = r"(\d+(?:\.\d+)?)"
    max_score: float = Field(10.0, gt=0)
    max_new_tokens: int = Field(8, ge=1)
    threshold: Threshold = 0.5


class PythonEvaluatorConfig(_NeedsKey):
    """"module:function" called with (scenario, response); returns a float, a dict or a Verdict."""

    needs = "function"

    kind: Literal["python"] = "python"
    function: str | None = None
    threshold: Threshold = 0.5


EVALUATOR_KINDS: dict[str, type[Section]] = {"rules": RulesEvaluatorConfig, "classifier": ClassifierEvaluatorConfig,
                                             "judge": JudgeEvaluatorConfig, "python": PythonEvaluatorConfig}
DEFAULT_KIND = "rules"


def evaluator_kind(value: Any) -> str:
    """The union's tag: `kind` of a mapping or a section, `rules` when left out."""
    return value.get("kind", DEFAULT_KIND) if isinstance(value, dict) else getattr(value, "kind", DEFAULT_KIND)


EvaluatorConfig = Annotated[
    Annotated[RulesEvaluatorConfig, Tag("rules")] | Annotated[ClassifierEvaluatorConfig, Tag("classifier")]
    | Annotated[JudgeEvaluatorConfig, Tag("judge")] | Annotated[PythonEvaluatorConfig, Tag("python")],
    Discriminator(evaluator_kind, custom_error_type="invalid_kind",
                  custom_error_message=f"kind must be one of {', '.join(map(repr, EVALUATOR_KINDS))}"),
]


def reject_keys_of_other_kinds(data):
    return reject_other_members(data, "kind", EVALUATOR_KINDS, DEFAULT_KIND)


_ADAPTER = TypeAdapter(Annotated[EvaluatorConfig, BeforeValidator(reject_keys_of_other_kinds)])


def evaluator_config(**fields):
    """The evaluator section `fields` describe, of the kind `kind` names: evaluator_config(kind="judge", model=...).
    Raises pydantic's ValidationError, as constructing a section does."""
    return _ADAPTER.validate_python(fields)
