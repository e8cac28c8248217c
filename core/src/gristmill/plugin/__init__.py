"""The plugin kit: what a plugin imports, and nothing of the core's read or write side.

Hook specs and ``hookimpl`` (:mod:`.hookspecs`), the component records and runtime protocols
(:mod:`.components`), the plugin manager (:mod:`.manager`), and helpers for writing components:
reading files and lines (:mod:`.files`), checking a dataset's files against their manifest
entry (:mod:`.integrity`), durable writes (:mod:`.atomic`), option checks (:mod:`.arguments`),
canonical examples (:mod:`.examples`), packing into free space (:mod:`.packing`) and overlong
documents (:mod:`.overlong`). :mod:`.renamed` keeps old first-party plugin names working.
"""
