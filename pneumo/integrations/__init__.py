"""The world outside: a PACS over DICOMweb, a local Orthanc to try it, PDF study reports, generated docs."""
