"""The ground floor: paths and class names, file I/O written atomically and read within bounds, the model card, process
memory. Imports nothing else of pneumo.
"""
