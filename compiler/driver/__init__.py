"""The driver: Python API (:mod:`compiler.driver.api`) and the ``lamina`` command line."""
