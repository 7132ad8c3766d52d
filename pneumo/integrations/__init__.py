"""The world outside: a PACS over DICOMweb, the local Orthanc for trying it, PDF study reports, generated documentation."""
