"""The methods text of a run, generated from its workflow (fMRIPrep's boilerplate).

Every workflow of the participant level is a niworkflows ``LiterateWorkflow`` whose
``__desc__`` says what it does with the options it was built with, citing references as
``[@key]``. :func:`write_boilerplate` collects them (``visit_desc``), numbers the citations and
writes ``logs/CITATION.md`` (read by the participant reports) and ``logs/CITATION.bib``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import __url__, __version__
from ..utils.atomic import write_text_atomic

#: Cited works: key -> (entry of the Markdown reference list, BibTeX entry).
REFERENCES = {
    "auton2n": (
        "Morell-Ortega S., et al. Auto-N2N: Self-supervised MRI denoising using synthetic pair "
        "generation and mixture of experts. MIDL 2026 (under review).",
        "@inproceedings{auton2n,\n  author = {Morell-Ortega, Sergio and others},\n"
        "  title = {Auto-N2N: Self-supervised MRI denoising using synthetic pair generation and "
        "mixture of experts},\n  booktitle = {Medical Imaging with Deep Learning (MIDL), under "
        "review},\n  year = {2026}\n}",
    ),
    "manjon2012": (
        "Manjón J.V., Coupé P., Buades A., Collins D.L., Robles M. New methods for MRI denoising "
        "based on sparseness and self-similarity. Medical Image Analysis 16(1):18-27, 2012. "
        "doi:10.1016/j.media.2011.04.003",
        "@article{manjon2012,\n  author = {Manj{\\'o}n, Jos{\\'e} V. and Coup{\\'e}, Pierrick and "
        "Buades, Antoni and Collins, D. Louis and Robles, Montserrat},\n  title = {New methods "
        "for {MRI} denoising based on sparseness and self-similarity},\n  journal = {Medical "
        "Image Analysis},\n  volume = {16},\n  number = {1},\n  pages = {18--27},\n"
        "  year = {2012},\n  doi = {10.1016/j.media.2011.04.003}\n}",
    ),
    "maggioni2013": (
        "Maggioni M., Katkovnik V., Egiazarian K., Foi A. Nonlocal transform-domain filter for "
        "volumetric data denoising and reconstruction. IEEE Transactions on Image Processing "
        "22(1):119-133, 2013. doi:10.1109/TIP.2012.2210725",
        "@article{maggioni2013,\n  author = {Maggioni, Matteo and Katkovnik, Vladimir and "
        "Egiazarian, Karen and Foi, Alessandro},\n  title = {Nonlocal transform-domain filter for "
        "volumetric data denoising and reconstruction},\n  journal = {IEEE Transactions on Image "
        "Processing},\n  volume = {22},\n  number = {1},\n  pages = {119--133},\n"
        "  year = {2013},\n  doi = {10.1109/TIP.2012.2210725}\n}",
    ),
    "nipype": (
        "Gorgolewski K., et al. Nipype: a flexible, lightweight and extensible neuroimaging data "
        "processing framework in Python. Frontiers in Neuroinformatics 5:13, 2011. "
        "doi:10.3389/fninf.2011.00013",
        "@article{nipype,\n  author = {Gorgolewski, Krzysztof and others},\n  title = {Nipype: a "
        "flexible, lightweight and extensible neuroimaging data processing framework in "
        "{Python}},\n  journal = {Frontiers in Neuroinformatics},\n  volume = {5},\n"
        "  pages = {13},\n  year = {2011},\n  doi = {10.3389/fninf.2011.00013}\n}",
    ),
    "bidsapps": (
        "Gorgolewski K.J., et al. BIDS apps: Improving ease of use, accessibility, and "
        "reproducibility of neuroimaging data analysis methods. PLoS Comput Biol "
        "13(3):e1005420, 2017. doi:10.1371/journal.pcbi.1005420",
        "@article{bidsapps,\n  author = {Gorgolewski, Krzysztof J. and others},\n  title = {{BIDS} "
        "apps: Improving ease of use, accessibility, and reproducibility of neuroimaging data "
        "analysis methods},\n  journal = {PLoS Computational Biology},\n  volume = {13},\n"
        "  number = {3},\n  pages = {e1005420},\n  year = {2017},\n"
        "  doi = {10.1371/journal.pcbi.1005420}\n}",
    ),
    "buades2005": (
        "Buades A., Coll B., Morel J.M. A review of image denoising algorithms, with a new one. "
        "Multiscale Modeling & Simulation 4(2):490-530, 2005. doi:10.1137/040616024",
        "@article{buades2005,\n  author = {Buades, Antoni and Coll, Bartomeu and Morel, Jean-Michel},"
        "\n  title = {A review of image denoising algorithms, with a new one},\n  journal = "
        "{Multiscale Modeling \\& Simulation},\n  volume = {4},\n  number = {2},\n"
        "  pages = {490--530},\n  year = {2005},\n  doi = {10.1137/040616024}\n}",
    ),
    "pytorch": (
        "Paszke A., et al. PyTorch: An imperative style, high-performance deep learning library. "
        "Advances in Neural Information Processing Systems 32:8024-8035, 2019.",
        "@inproceedings{pytorch,\n  author = {Paszke, Adam and others},\n  title = {{PyTorch}: An "
        "imperative style, high-performance deep learning library},\n  booktitle = {Advances in "
        "Neural Information Processing Systems 32},\n  pages = {8024--8035},\n  year = {2019}\n}",
    ),
    "monai": (
        "Cardoso M.J., et al. MONAI: An open-source framework for deep learning in healthcare. "
        "arXiv:2211.02701, 2022. doi:10.48550/arXiv.2211.02701",
        "@article{monai,\n  author = {Cardoso, M. Jorge and others},\n  title = {{MONAI}: An "
        "open-source framework for deep learning in healthcare},\n  journal = {arXiv preprint "
        "arXiv:2211.02701},\n  year = {2022},\n  doi = {10.48550/arXiv.2211.02701}\n}",
    ),
    "numba": (
        "Lam S.K., Pitrou A., Seibert S. Numba: a LLVM-based Python JIT compiler. Proceedings of "
        "the Second Workshop on the LLVM Compiler Infrastructure in HPC, 2015. "
        "doi:10.1145/2833157.2833162",
        "@inproceedings{numba,\n  author = {Lam, Siu Kwan and Pitrou, Antoine and Seibert, "
        "Stanley},\n  title = {Numba: a {LLVM}-based {Python} {JIT} compiler},\n  booktitle = "
        "{Proceedings of the Second Workshop on the LLVM Compiler Infrastructure in HPC},\n"
        "  year = {2015},\n  doi = {10.1145/2833157.2833162}\n}",
    ),
    "nibabel": (
        "Brett M., Markiewicz C.J., Hanke M., et al. NiBabel: access a cacophony of neuro-imaging "
        "file formats. Zenodo. doi:10.5281/zenodo.591597",
        "@misc{nibabel,\n  author = {Brett, Matthew and Markiewicz, Christopher J. and Hanke, "
        "Michael and others},\n  title = {{NiBabel}: access a cacophony of neuro-imaging file "
        "formats},\n  publisher = {Zenodo},\n  doi = {10.5281/zenodo.591597}\n}",
    ),
    "pybids": (
        "Yarkoni T., et al. PyBIDS: Python tools for BIDS datasets. Journal of Open Source "
        "Software 4(40):1294, 2019. doi:10.21105/joss.01294",
        "@article{pybids,\n  author = {Yarkoni, Tal and others},\n  title = {{PyBIDS}: {Python} "
        "tools for {BIDS} datasets},\n  journal = {Journal of Open Source Software},\n"
        "  volume = {4},\n  number = {40},\n  pages = {1294},\n  year = {2019},\n"
        "  doi = {10.21105/joss.01294}\n}",
    ),
}


def software_reference() -> tuple[str, str]:
    """Reference list entry and BibTeX entry of this version of bids-auton2n itself."""
    return (
        f"bids-auton2n {__version__}: a BIDS-App for self-supervised denoising of anatomical MRI "
        f"(Auto-N2N mixture of experts fused with RI-NLM). {__url__}",
        "@software{bids_auton2n,\n  title = {bids-auton2n: a {BIDS-App} for self-supervised "
        "denoising of anatomical {MRI}},\n"
        f"  version = {{{__version__}}},\n  url = {{{__url__}}},\n  license = {{Apache-2.0}}\n}}",
    )


_CITATION = re.compile(r"\[@([\w-]+)\]")


def render(text: str) -> tuple[str, list[str]]:
    """Replace the ``[@key]`` citations of ``text`` by ``[n]``, numbered in order of appearance.

    Parameters
    ----------
    text : str
        Methods text citing :data:`REFERENCES` keys (and ``bids_auton2n``).

    Returns
    -------
    text : str
        The text with numbered citations.
    keys : list of str
        The cited keys, in the order of their numbers.

    Raises
    ------
    KeyError
        A citation of an unknown key.
    """
    keys: list[str] = []

    def number(match: re.Match) -> str:
        key = match.group(1)
        if key != "bids_auton2n" and key not in REFERENCES:
            raise KeyError(f"methods text cites an unknown reference [@{key}]")
        if key not in keys:
            keys.append(key)
        return f"[{keys.index(key) + 1}]"

    return _CITATION.sub(number, text), keys


def write_boilerplate(output_dir: str | Path, workflow) -> Path:
    """Write ``logs/CITATION.md`` and ``logs/CITATION.bib`` from ``workflow``'s descriptions.

    Parameters
    ----------
    output_dir : str or Path
        Derivatives root.
    workflow : niworkflows.engine.workflows.LiterateWorkflow
        The workflow of the run (:func:`~bids_auton2n.workflows.base.init_auton2n_wf`).

    Returns
    -------
    Path
        The Markdown file.
    """
    text, keys = render(workflow.visit_desc())
    entries = {**REFERENCES, "bids_auton2n": software_reference()}
    references = "\n".join(f"{n}. {entries[key][0]}" for n, key in enumerate(keys, 1))
    logs = Path(output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # every array task of a cluster run writes them: atomically, so none reads half a file
    write_text_atomic(logs / "CITATION.bib",
                      "\n\n".join(entries[key][1] for key in keys) + "\n")
    out = logs / "CITATION.md"
    write_text_atomic(out, text.rstrip("\n") + "\n\n### References\n\n" + references + "\n")
    return out
