# The compiled twin has exactly the pure twin's names and types (ext/_c.pyx).
from ._py import NEW as NEW
from ._py import PENDING as PENDING
from ._py import READY as READY
from ._py import WAIT as WAIT
from ._py import CallFuture as CallFuture
from ._py import ReplayIndex as ReplayIndex
from ._py import ReplayMismatch as ReplayMismatch
from ._py import decode_operations as decode_operations
from ._py import decode_value as decode_value
from ._py import dedup_id as dedup_id
from ._py import digest as digest
from ._py import encode_value as encode_value
from ._py import mismatch_advice as mismatch_advice
from ._py import operation_id as operation_id
