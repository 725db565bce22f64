"""Every asset carries a code version, and the core's sources cannot change without the versions noticing."""

from __future__ import annotations

import dagster as dg

from cb_assets.defs.code_versions import CODE_VERSIONS, DIGESTS, SOURCES, source_digest


def test_every_asset_has_its_code_version() -> None:
    from cb_assets.definitions import defs

    versions = {
        spec.key.to_user_string(): spec.code_version
        for a in defs.assets
        if isinstance(a, dg.AssetsDefinition)
        for spec in a.specs
    }
    assert {k: v for k, v in versions.items() if k in CODE_VERSIONS} == CODE_VERSIONS
    assert set(CODE_VERSIONS) <= set(versions)


def test_core_sources_changed_only_with_a_version_bump() -> None:
    stale = {a: source_digest(a) for a in SOURCES if source_digest(a) != DIGESTS[a]}
    assert not stale, (
        "the sources behind these assets changed: bump their CODE_VERSIONS when results change, and record "
        f"the new digests in cb_assets/defs/code_versions.py DIGESTS: {stale}"
    )
