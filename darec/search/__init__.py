"""Dynamic adaption: Ax Bayesian optimisation over DARec's per-layer adapter types (``darec search``)."""

from darec.search.config import SearchConfig, config_from_dict, load_search_config
from darec.search.run import SearchOutcome, run_search
from darec.search.space import Candidate, SearchSpace
from darec.search.trial import FitObjective, TrialJob, TrialResult

__all__ = ["SearchConfig", "SearchOutcome", "SearchSpace", "Candidate", "FitObjective", "TrialJob", "TrialResult",
           "config_from_dict", "load_search_config", "run_search"]
