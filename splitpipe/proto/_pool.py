"""splitpipe's private protobuf descriptor pool.

The generated modules register here rather than in protobuf's default pool, because
tritonclient (and Triton's own Python packages) put their copy of the ``inference`` package in
the default pool, and two copies of one symbol there fail to import ("duplicate symbol").
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
