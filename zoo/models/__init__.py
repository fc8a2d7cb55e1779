"""Model families. Each wires `zoo.nn` blocks into a network; ``convert.py`` maps foreign checkpoints."""

from zoo.models.spec import Configurable, from_spec, spec_of

__all__ = ["Configurable", "from_spec", "spec_of"]
