"""Images and collections: decoding X-ray files (PNG, JPEG, DICOM), the changes an acquisition makes, labelled folders,
their patients, duplicates and splits.
"""
