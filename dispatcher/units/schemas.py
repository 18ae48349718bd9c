"""HTTP shapes of organisational units."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from dispatcher.kit.fields import Name, Text
from dispatcher.tables.units import Unit
from dispatcher.units.service import territory_of

UNIT_CODE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"
# Province codes of the 2025 map, or their names ("01", "Hà Nội"); checked by the service.
Province = Text(50)


class UnitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Name(UNIT_CODE) = Field(description="Short and stable: how files and commands name it")  # type: ignore[valid-type]
    name: Text(200) = Field(description="The Vietnamese name")  # type: ignore[valid-type]
    parent: Name(UNIT_CODE) | None = Field(  # type: ignore[valid-type]
        default=None, description="The parent's code; none only for the root"
    )
    territory: list[Province] = Field(  # type: ignore[valid-type]
        default_factory=list,
        max_length=34,
        description="Provinces of the 2025 map (codes or names): inside the parent's, apart "
        "from the siblings'. The root's is the whole country.",
    )


class UnitPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text(200) | None = None  # type: ignore[valid-type]
    parent: Name(UNIT_CODE) | None = Field(default=None, description="The new parent's code")  # type: ignore[valid-type]
    territory: list[Province] | None = Field(default=None, max_length=34)  # type: ignore[valid-type]


class UnitOut(BaseModel):
    id: int
    code: str
    name: str
    parent_id: int | None
    territory: list[str] = Field(description="Current province codes")
    depth: int = Field(default=0, description="0 for the root")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, unit: Unit, depth: int = 0) -> UnitOut:
        return cls(
            id=unit.id,
            code=unit.code,
            name=unit.name,
            parent_id=unit.parent_id,
            territory=list(territory_of(unit)),
            depth=depth,
            created_at=unit.created_at,
            updated_at=unit.updated_at,
        )
