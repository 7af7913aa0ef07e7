"""Python source that caps the address space of the process it runs in (``RLIMIT_AS``) at
what the process maps already plus ``{room}`` bytes: the tests of running out of memory
(tests/test_exhaustion.py, tests/test_lambda_errors.py) put it after the imports of the
process they start, so that their mappings are counted and only the work runs short."""

LIMIT_ROOM = '''
import resource

def _vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + {room}, resource.RLIM_INFINITY))
'''
