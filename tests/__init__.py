"""The project's test suite (a regular package: a dependency, neurokit2 0.2.12, installs a top-level ``tests``
package into site-packages, which would otherwise win over this folder as a namespace package)."""
