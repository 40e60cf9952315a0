"""The project's version, as pbr computes it from git or the package."""

import pbr.version

version_info = pbr.version.VersionInfo('storage-engine')


def version_string() -> str:
    return version_info.version_string()
