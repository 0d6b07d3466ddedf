"""capsjax: capsules trained as a routing-weighted product of expert neurons.

Pure JAX functions over a params pytree {"W": (Nv, Nh, Dh, Dv),
"a": (Nv, Dv), "b": (Nh, Dh)}; model options are static values (`Routing`,
`visible=`), random functions take the key first, samplers are kernels, and
the caller jits. See the README's API table and docs/model.md (the math).
"""

from capsjax.cd import CDInfo
from capsjax.cd import CDMonitors
from capsjax.cd import ParamsEMAState
from capsjax.cd import TrainState
from capsjax.cd import adam
from capsjax.cd import cd_gradient
from capsjax.cd import cd_monitors
from capsjax.cd import effective_weights
from capsjax.cd import ema_params
from capsjax.cd import init_params
from capsjax.cd import init_train_state
from capsjax.cd import momentum_schedule
from capsjax.cd import params_ema
from capsjax.cd import sgd
from capsjax.cd import train_step
from capsjax.cd import visible_bias_from_data
from capsjax.centering import Centering
from capsjax.centering import Offsets
from capsjax.centering import centered_gradient
from capsjax.centering import init_offsets
from capsjax.centering import update_offsets
from capsjax.energies import energy
from capsjax.energies import free_energy
from capsjax.energies import hidden_input
from capsjax.energies import hidden_probs
from capsjax.energies import interaction_statistics
from capsjax.energies import log_partition_given_hidden
from capsjax.energies import reconstruct
from capsjax.energies import routed_free_energy
from capsjax.energies import sample_hidden
from capsjax.energies import sample_visible
from capsjax.energies import topdown_means
from capsjax.energies import visible_input
from capsjax.energies import visible_probs
from capsjax.likelihood import MIN_ESS
from capsjax.likelihood import MIN_ESS_FRACTION
from capsjax.likelihood import AISResult
from capsjax.likelihood import ReverseAISResult
from capsjax.likelihood import ais
from capsjax.likelihood import ais_upper_bound
from capsjax.likelihood import base_rate_bias
from capsjax.likelihood import beta_schedule
from capsjax.likelihood import ess_threshold
from capsjax.likelihood import exact_log_z
from capsjax.likelihood import log_prob
from capsjax.likelihood import pseudo_log_likelihood
from capsjax.likelihood import reverse_ais
from capsjax.likelihood import tempered_log_density
from capsjax.likelihood import tempered_mh_step
from capsjax.modules import CapsulePoE
from capsjax.routing import RULES
from capsjax.routing import Routing
from capsjax.routing import RoutingParse
from capsjax.routing import RoutingResult
from capsjax.routing import predictions
from capsjax.routing import route
from capsjax.routing import route_from_visible
from capsjax.routing import route_visible
from capsjax.routing import routing_entropy
from capsjax.routing import routing_parse
from capsjax.routing import squash
from capsjax.sampling import ChainInfo
from capsjax.sampling import ChainState
from capsjax.sampling import Kernel
from capsjax.sampling import RunInfo
from capsjax.sampling import gibbs
from capsjax.sampling import metropolis_accept
from capsjax.sampling import mh
from capsjax.sampling import mh_log_ratio
from capsjax.sampling import run_chain
from capsjax.sampling import sample_from_marginals
from capsjax.tempering import TemperingInfo
from capsjax.tempering import TemperingState
from capsjax.tempering import tempering

__version__ = "0.2.0"
