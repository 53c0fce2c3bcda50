"""The report page as a list of blocks (headings, paragraphs, tables, images), and the two ways
of writing it: Markdown (images as links) and self-contained HTML (images embedded)."""

from __future__ import annotations

import base64
import dataclasses
import html
from typing import Dict, List, Sequence, Union


@dataclasses.dataclass(frozen=True)
class Heading:
  level: int
  text: str


@dataclasses.dataclass(frozen=True)
class Paragraph:
  text: str


@dataclasses.dataclass(frozen=True)
class Table:
  headers: Sequence[str]
  rows: Sequence[Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Image:
  file_name: str
  alt: str


Block = Union[Heading, Paragraph, Table, Image]

def _markdown_cell(text: str) -> str:
  return text.replace('|', '\\|').replace('\n', ' ')


def to_markdown(blocks: List[Block]) -> str:
  """Markdown; images are links to the PNG files next to the page."""
  parts = []
  for block in blocks:
    if isinstance(block, Heading):
      parts.append(f'{"#" * block.level} {block.text}')
    elif isinstance(block, Paragraph):
      parts.append(block.text)
    elif isinstance(block, Table):
      lines = ['| ' + ' | '.join(_markdown_cell(h) for h in block.headers) + ' |',
               '|' + '---|' * len(block.headers)]
      lines += ['| ' + ' | '.join(_markdown_cell(c) for c in row) + ' |' for row in block.rows]
      parts.append('\n'.join(lines))
    else:
      parts.append(f'![{block.alt}]({block.file_name})')
  return '\n\n'.join(parts) + '\n'


HTML_STYLE = ('body{font-family:sans-serif;margin:2em;max-width:80em}'
              'table{border-collapse:collapse;margin:0.5em 0 1.5em}'
              'th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:left}'
              'th{background:#eee}img{max-width:100%}')


def to_html(blocks: List[Block], images: Dict[str, bytes], title: str) -> str:
  """A self-contained HTML page: every image is embedded as a base64 PNG data URI."""
  parts = []
  for block in blocks:
    if isinstance(block, Heading):
      parts.append(f'<h{block.level}>{html.escape(block.text)}</h{block.level}>')
    elif isinstance(block, Paragraph):
      parts.append(f'<p>{html.escape(block.text)}</p>')
    elif isinstance(block, Table):
      head = ''.join(f'<th>{html.escape(h)}</th>' for h in block.headers)
      body = ''.join('<tr>' + ''.join(f'<td>{html.escape(c)}</td>' for c in row) + '</tr>'
                     for row in block.rows)
      parts.append(f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
    else:
      data = base64.b64encode(images[block.file_name]).decode('ascii')
      parts.append(f'<p><img alt="{html.escape(block.alt)}" '
                   f'src="data:image/png;base64,{data}"></p>')
  return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<title>{html.escape(title)}</title><style>{HTML_STYLE}</style></head>\n<body>\n'
          + '\n'.join(parts) + '\n</body></html>\n')
