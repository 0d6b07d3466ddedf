"""capsjax: capsules trained as a routing-weighted product of expert neurons.

Pure JAX functions over a params pytree {"W": (Nv, Nh, Dh, Dv),
"a": (Nv, Dv), "b": (Nh, Dh)}; the caller jits. See MODEL.md for the math.
"""

from capsjax.cd import CDInfo
from capsjax.cd import TrainState
from capsjax.cd import adam
from capsjax.cd import cd_gradient
from capsjax.cd import init_train_state
from capsjax.cd import momentum_schedule
from capsjax.cd import sgd
from capsjax.cd import train_step
from capsjax.energies import energy
from capsjax.energies import free_energy
from capsjax.energies import hidden_input
from capsjax.energies import hidden_probs
from capsjax.energies import log_partition_given_hidden
from capsjax.energies import reconstruct
from capsjax.energies import routed_free_energy
from capsjax.energies import sample_hidden
from capsjax.energies import sample_visible
from capsjax.energies import visible_input
from capsjax.energies import visible_probs
from capsjax.likelihood import AISResult
from capsjax.likelihood import ais
from capsjax.likelihood import base_rate_bias
from capsjax.likelihood import beta_schedule
from capsjax.likelihood import exact_log_z
from capsjax.likelihood import log_prob
from capsjax.likelihood import tempered_log_density
from capsjax.likelihood import tempered_mh_step
from capsjax.modules import CapsulePoE
from capsjax.routing import RoutingResult
from capsjax.routing import predictions
from capsjax.routing import route
from capsjax.routing import route_visible
from capsjax.routing import routing_entropy
from capsjax.routing import routing_temperature
from capsjax.routing import squash
from capsjax.sampling import ChainInfo
from capsjax.sampling import ChainState
from capsjax.sampling import RunInfo
from capsjax.sampling import gibbs_step
from capsjax.sampling import mh_log_ratio
from capsjax.sampling import mh_step
from capsjax.sampling import run as run_chain
from capsjax.sampling import init as init_chain

__version__ = "0.1.0"
