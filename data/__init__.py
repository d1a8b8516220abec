"""aaclip.data: the torch-free data layer: JSON-lines records, dataset folder layouts, few-shot sampling,
synthetic products with drawn defects, object names of classes, reference-image files, ``aaclip-data``.

Owns: ``records`` (the record format, reading/writing/checking), ``layouts`` (MVTec AD, VisA, BTAD, plain
good/bad folders), ``shots`` (k-shot and split sampling), ``synth`` (synthetic products and defects),
``object_names`` (prompt names of class folders), ``references`` (which normal images a reference bank is
built from), ``cli`` (``aaclip-data``).
May import: numpy, opencv, click and aaclip.contract only; never torch (train, export and calibration
import it, calibration on a bare Jetson).
"""
