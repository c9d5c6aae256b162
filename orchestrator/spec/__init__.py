"""The sweep spec: nested pydantic models whose field names are the YAML keys (models.py: the
spec; search_space.py and sections.py: its parts; fields.py: how one value is read), read into
one line per problem (reader.py), with a JSON Schema for editors (schema.py)."""

from .models import SweepSpec
from .reader import load_spec, spec_from_dict, spec_to_yaml
from .search_space import CURVE_TRAINING_THRESHOLD, EDITOR_PARAMS, EDITORS, LAYER_FIELD, OTHER_EDITORS_PARAMS, SEARCHED, Choice, FloatRange, IntRange, Options, SearchSpace, editor_columns
from .sections import ConfirmSpec, Constraint, CurveSpec, DataSpec, EarlyStopping, MlflowSpec, ModelSpec, Objective, OptunaSpec, RaySpec, Repeats, Resources

__all__ = [
    "CURVE_TRAINING_THRESHOLD", "EDITOR_PARAMS", "EDITORS", "LAYER_FIELD", "OTHER_EDITORS_PARAMS", "SEARCHED", "Choice", "Options", "ConfirmSpec", "Constraint", "CurveSpec", "DataSpec", "EarlyStopping", "FloatRange",
    "IntRange", "MlflowSpec", "ModelSpec", "Objective", "OptunaSpec", "RaySpec", "Repeats", "Resources", "SearchSpace", "SweepSpec", "load_spec",
    "spec_from_dict", "spec_to_yaml", "editor_columns",
]
