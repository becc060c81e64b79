"""The defense registry: an explicit mapping name -> defense. ``--method`` choices are its keys;
a new method is one module, one search-space file and one line here."""
from trainables.atld import ATLD
from trainables.atop import AToP
from trainables.ijsat import IJSAT
from trainables.pgd_at import PGDAT
from trainables.rvs import RVS
from trainables.standard import Standard
from trainables.trades import TRADES

REGISTRY = {
    "standard": Standard(),
    "pgd_at": PGDAT(),
    "trades": TRADES(),
    "rvs": RVS(),
    "atld": ATLD(),
    "atop": AToP(),
    "ijsat": IJSAT(),
}
