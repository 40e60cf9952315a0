"""Options shared by the test tiers."""


def pytest_addoption(parser):
    group = parser.getgroup('storage-engine')
    group.addoption('--long', action='store_true', default=False,
                    help='run the long forms of the reliability tests '
                         '(crash torture: 500 kills)')
    group.addoption('--kills', type=int, default=None,
                    help='number of kills for the crash torture')
    group.addoption('--torture-seed', type=int, default=None,
                    help='seed of the crash torture (default: random)')
