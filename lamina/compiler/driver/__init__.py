"""The driver: Python API (:mod:`lamina.compiler.driver.api`) and the ``lamina`` command line."""
