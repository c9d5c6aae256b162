"""The sweep spec: nested pydantic models whose field names are the YAML keys (models.py), read
into one line per problem (reader.py), with a JSON Schema for editors (schema.py)."""

from .models import CURVE_TRAINING_THRESHOLD, LAYER_FIELD, SEARCHED, Choice, ConfirmSpec, Constraint, CurveSpec, DataSpec, EarlyStopping, FloatRange, IntRange
from .models import MlflowSpec, ModelSpec, Objective, OptunaSpec, RaySpec, Repeats, Resources, SearchSpace, SweepSpec
from .reader import load_spec, spec_from_dict, spec_to_yaml

__all__ = [
    "CURVE_TRAINING_THRESHOLD", "LAYER_FIELD", "SEARCHED", "Choice", "ConfirmSpec", "Constraint", "CurveSpec", "DataSpec", "EarlyStopping", "FloatRange",
    "IntRange", "MlflowSpec", "ModelSpec", "Objective", "OptunaSpec", "RaySpec", "Repeats", "Resources", "SearchSpace", "SweepSpec", "load_spec",
    "spec_from_dict", "spec_to_yaml",
]
