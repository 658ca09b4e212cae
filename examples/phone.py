# -*- test-case-name: tests.test_examples -*-
"""
A small SIP/RTP user agent for the demo and for trying SPWM by hand.

The phone itself is C{spwm/testing/phone.py} (an independent SIP parser:
it shares no code with SPWM's, so a bug shared by both ends could not
hide); the demo, the tests and the benchmarks import it from there.  This
script runs it from the command line::

    python examples/phone.py --name bob --proxy 127.0.0.1:5060 --answer
    python examples/phone.py --name alice --proxy 127.0.0.1:5060 --call bob --seconds 5
"""

import os
import sys

try:
    import spwm  # noqa: F401  (installed with pip install .)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spwm.testing.phone import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
